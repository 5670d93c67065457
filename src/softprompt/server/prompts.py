"""The prompts a server holds: every prompt folder of its directory at start, then hot loads and unloads.

A prompt's name is its folder's name, checked like every prompt name (letters, digits, '.', '_',
'-'), and a folder to load is resolved and must lie inside the directory, so no request can make
the server read outside it. Uploaded prompts are held in memory only: the server never writes to
the directory (a prompt to keep across restarts is a folder there).
"""

from __future__ import annotations

from pathlib import Path

from ..backbones import DEFAULT_BACKBONE, BackboneSpec, load_backbone
from ..bank import check_name
from ..errors import SoftpromptError
from ..model import PromptedModel
from ..prompt_io import METADATA_NAME, WEIGHTS_NAME, check_compatible, load_prompt, prompt_from_bytes
from .config import ServeConfig


def prompt_folders(root: Path) -> list[Path]:
    """The folders of `root` that hold a prompt, by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / WEIGHTS_NAME).is_file() and (p / METADATA_NAME).is_file())


class PromptDirectory:
    """Loads prompts into the model's bank from folders inside `root`, or from uploaded bytes."""

    def __init__(self, root: str | Path, model: PromptedModel, allow_other_backbone: bool = False):
        self.root = Path(root).resolve()
        self.model, self.allow_other_backbone = model, allow_other_backbone

    def folder(self, relative: str) -> Path:
        """`root / relative`, refused unless it resolves (links followed) to a folder inside root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise SoftpromptError(f"folder {relative!r} is not inside the prompt directory")
        if not path.is_dir():
            raise SoftpromptError(f"no prompt folder {relative!r} in the prompt directory")
        return path

    def load_all(self) -> list[str]:
        """Every prompt folder of the directory; raises SoftpromptError naming the first one that cannot load."""
        names = []
        for path in prompt_folders(self.root):
            try:
                names.append(self.load_folder(path.name))
            except SoftpromptError as err:
                raise SoftpromptError(f"prompt folder {path}: {err}") from None
        return names

    def load_folder(self, name: str, relative: str | None = None) -> str:
        """Load (or replace) prompt `name` from folder `relative` (default: `name`) of the directory."""
        check_name(name)
        path = self.folder(relative or name)
        weight, metadata = load_prompt(path)
        check_compatible(metadata, str(path), self.model.adapter, self.allow_other_backbone)
        self.model.add_prompt(name, weight, metadata)
        return name

    def load_upload(self, name: str, weights: bytes, metadata: object) -> str:
        """Load (or replace) prompt `name` from the bytes of a prompt.safetensors and the object of its prompt.json."""
        check_name(name)
        weight, parsed = prompt_from_bytes(weights, metadata, "uploaded prompt")
        check_compatible(parsed, "uploaded prompt", self.model.adapter, self.allow_other_backbone)
        self.model.add_prompt(name, weight, parsed)
        return name

    def describe(self, name: str) -> dict:
        record = self.model.bank[name]
        meta = record.metadata
        return {"name": name, "task": meta.task, "labels": meta.labels, "length": record.length,
                "target_format": meta.target_format, "backbone": meta.backbone, "backbone_fingerprint": meta.backbone_fingerprint}


def load_server_model(config: ServeConfig) -> tuple[PromptedModel, PromptDirectory]:
    """The backbone (named, else the first prompt folder's, else the packaged default) wearing every prompt of the directory."""
    root = Path(config.prompts)
    if not root.is_dir():
        raise SoftpromptError(f"{root}: prompt directory not found (--prompts)")
    folders = prompt_folders(root)
    name = config.model or (load_prompt(folders[0])[1].backbone if folders else None) or DEFAULT_BACKBONE
    model = PromptedModel(load_backbone(BackboneSpec(name, config.dtype, config.device))).eval()
    model.adapter.enable_prefix_cache(int(config.prompt_cache_mb * 2**20))
    directory = PromptDirectory(root, model, config.allow_other_backbone)
    directory.load_all()
    return model, directory
