"""The prompts a server holds: the prompt folders of its directory, hot loads and unloads, and replicas following it.

A prompt's name is its folder's name, checked like every prompt name (letters, digits, '.', '_',
'-', never a leading '.'), and a folder to load is resolved and must lie inside the directory, so
no request can make the server read outside it. Hidden entries (a writer's `.versions`, `.tmp-*`
and `.lock`, see prompt_store.py) are never prompts.

The directory is the source of truth: `rescan` makes the bank follow it, so replicas sharing it
serve the same prompts. A writable server (`--prompts-writable`) writes what PUT loads and deletes
what DELETE unloads, atomically for readers; otherwise uploads live in memory only, rescans leave
them be, and an unload or upload that shadows a folder lasts until that folder is rescanned.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import Tensor

from ..backbones import DEFAULT_BACKBONE, BackboneSpec, load_backbone
from ..bank import check_name
from ..errors import SoftpromptError
from ..model import PromptedModel
from ..prompt_io import (
    METADATA_NAME,
    WEIGHTS_NAME,
    PromptMetadata,
    check_compatible,
    load_prompt,
    prompt_from_bytes,
    prompt_from_files,
    read_prompt_files,
)
from .config import ServeConfig
from .prompt_store import Snapshot, delete_prompt, file_stat, write_prompt, writer_active

log = logging.getLogger("softprompt.server")


def prompt_folders(root: Path) -> list[Path]:
    """The folders (or links to folders) of `root` that hold a prompt, by name; hidden entries are the writer's own."""
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()
                  and (p / WEIGHTS_NAME).is_file() and (p / METADATA_NAME).is_file())


def no_folder(relative: str) -> SoftpromptError:
    return SoftpromptError(f"no prompt folder {relative!r} in the prompt directory")


class PromptDirectory:
    """Loads prompts into the model's bank from folders inside `root`, or from uploaded bytes, and follows `root`."""

    def __init__(self, root: str | Path, model: PromptedModel, allow_other_backbone: bool = False, writable: bool = False):
        self.root = Path(root).resolve()
        self.model, self.allow_other_backbone, self.writable = model, allow_other_backbone, writable
        if writable and not os.access(self.root, os.W_OK | os.X_OK):  # found at start, not at the first PUT
            raise SoftpromptError(f"{self.root}: the prompt directory is not writable (--prompts-writable)")
        self._hashes: dict[str, str] = {}  # name -> digest of what is loaded
        self._stats: dict[str, tuple] = {}  # name -> its files' stat when last read, so a rescan reads only what changed
        self._pinned: set[str] = set()  # loaded without a folder of their own (in-memory uploads): rescans do not unload them
        self._failures: dict[str, str] = {}  # the last problem logged per folder, so a broken folder is logged once

    def folder(self, relative: str) -> Path:
        """`root / relative`, refused unless it resolves (links followed) to a folder inside root and names nothing hidden."""
        path = self._resolve(relative)
        if not path.is_dir():
            raise no_folder(relative)
        return path

    def _resolve(self, relative: str) -> Path:
        if any(part.startswith(".") and part != ".." for part in Path(relative).parts):
            raise SoftpromptError(f"folder {relative!r} is hidden; hidden folders of the prompt directory are not prompts")
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise SoftpromptError(f"folder {relative!r} is not inside the prompt directory")
        return path

    # ---- loading -----------------------------------------------------------------------------------
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
        """Load (or replace) prompt `name` from folder `relative` (default: `name`) of the directory; writes nothing."""
        check_name(name)
        path, snapshot, stat = self._read(relative or name)
        weight, metadata = self._parse(snapshot, path)
        self._add(name, weight, metadata, snapshot.digest, pinned=not self._is_own(name, path), stat=stat)
        return name

    def load_upload(self, name: str, weights: bytes, metadata: object) -> str:
        """Load (or replace) prompt `name` from the bytes of a prompt.safetensors and the object of its prompt.json, in memory."""
        check_name(name)
        weight, parsed = prompt_from_bytes(weights, metadata, "uploaded prompt")
        check_compatible(parsed, "uploaded prompt", self.model.adapter, self.allow_other_backbone)
        self._add(name, weight, parsed, Snapshot.of_upload(weights, metadata).digest, pinned=True)
        return name

    def put_upload(self, name: str, weights: bytes, metadata: dict) -> str:
        """`load_upload`, and on a writable server the prompt folder `root/name` written too, after every check passed."""
        if not self.writable:
            return self.load_upload(name, weights, metadata)
        check_name(name)
        weight, parsed = prompt_from_bytes(weights, metadata, "uploaded prompt")
        check_compatible(parsed, "uploaded prompt", self.model.adapter, self.allow_other_backbone)
        snapshot = Snapshot.of_upload(weights, metadata)
        write_prompt(self.root, name, snapshot)
        self._add(name, weight, parsed, snapshot.digest, pinned=False)
        return name

    def put_folder(self, name: str, relative: str | None = None) -> str:
        """`load_folder`, and on a writable server another folder's files copied to `root/name`, so replicas load it too."""
        check_name(name)
        path, snapshot, stat = self._read(relative or name)
        weight, metadata = self._parse(snapshot, path)
        own = self._is_own(name, path)
        if self.writable and not own:
            write_prompt(self.root, name, snapshot)
            own, stat = True, None
        self._add(name, weight, metadata, snapshot.digest, pinned=not own, stat=stat)
        return name

    def remove(self, name: str) -> None:
        """Unload prompt `name`; on a writable server delete its folder too (its link and versions).

        On a read-only server a folder of that name stays, and the next rescan loads it again.
        """
        check_name(name)
        deleted = self.writable and delete_prompt(self.root, name)
        if name in self.model.bank or not deleted:
            self.model.bank.remove(name)  # raises SoftpromptError naming the loaded prompts when there was nothing
        self._forget(name)

    def rescan(self) -> tuple[list[str], list[str]]:
        """Follow the directory: (names loaded or reloaded, names unloaded). Never raises.

        A folder whose content differs from what is loaded is loaded; one that fails is logged once
        and skipped, its previous version staying loaded. A loaded prompt whose folder is gone is
        unloaded, unless it never had one (an in-memory upload) or a writer is mid-swap on it. An
        unreadable directory (a share that dropped) changes nothing.
        """
        try:
            folders = prompt_folders(self.root)
        except OSError as err:
            log.warning("prompt directory %s cannot be listed, prompts left as they are: %s", self.root, err)
            return [], []
        loaded, unloaded, present = [], [], set()
        for path in folders:
            present.add(path.name)
            try:
                if self._refresh(path.name):
                    loaded.append(path.name)
                self._failures.pop(path.name, None)
            except Exception as err:  # noqa: BLE001 - one bad folder must not stop the others, nor the server
                kept = "; the version loaded before stays" if path.name in self.model.bank else ""
                self._report(path.name, f"rescan skipped prompt folder {path}: {err}{kept}")
        for name in set(self._failures) - present:  # a broken folder that went away: log it again if it returns
            del self._failures[name]
        for name in self.model.bank.names:
            if name not in present and name not in self._pinned and not writer_active(self.root, name):
                self.model.bank.remove(name)
                self._forget(name)
                unloaded.append(name)
        return loaded, unloaded

    def _refresh(self, name: str) -> bool:
        """Load `root/name` if it changed since it was loaded; whether it was."""
        check_name(name)
        known = self._stats.get(name)
        if name in self.model.bank and known is not None and known == file_stat(self._resolve(name)):
            return False
        path, snapshot, stat = self._read(name)
        if name in self.model.bank and self._hashes.get(name) == snapshot.digest:
            self._stats[name] = stat
            self._pinned.discard(name)
            return False
        weight, metadata = self._parse(snapshot, path)
        self._add(name, weight, metadata, snapshot.digest, pinned=False, stat=stat)
        return True

    # ---- what is loaded ----------------------------------------------------------------------------
    def content_hash(self, name: str) -> str:
        """The loaded prompt's "sha256:HEX" (weights bytes, then metadata bytes): equal across replicas serving the same one."""
        self.model.bank[name]  # raises SoftpromptError for an unknown prompt
        if name not in self._hashes:
            raise SoftpromptError(f"prompt {name!r} was not loaded through the prompt directory")
        return self._hashes[name]

    def describe(self, name: str) -> dict:
        record = self.model.bank[name]
        meta = record.metadata
        return {"name": name, "task": meta.task, "labels": meta.labels, "length": record.length,
                "target_format": meta.target_format, "backbone": meta.backbone, "backbone_fingerprint": meta.backbone_fingerprint,
                "sha256": self._hashes.get(name)}

    def _add(self, name: str, weight: Tensor, metadata: PromptMetadata, digest: str, pinned: bool, stat: tuple | None = None) -> None:
        self.model.add_prompt(name, weight, metadata)
        self._hashes[name], self._stats[name] = digest, stat
        (self._pinned.add if pinned else self._pinned.discard)(name)

    def _forget(self, name: str) -> None:
        for table in (self._hashes, self._stats, self._failures):
            table.pop(name, None)
        self._pinned.discard(name)

    def _report(self, name: str, message: str) -> None:
        if self._failures.get(name) != message:
            log.warning("%s", message)
            self._failures[name] = message

    # ---- reading -------------------------------------------------------------------------------------
    def _read(self, relative: str) -> tuple[Path, Snapshot, tuple | None]:
        """(resolved folder, its bytes, its files' stat), both files read from one resolved version.

        A writer may relink the name and delete the old version between the resolve and the read:
        then the name resolves elsewhere by now, and that version is read instead.
        """
        for _ in range(5):
            path = self._resolve(relative)
            try:
                if not path.is_dir():
                    raise no_folder(relative)
                stat = file_stat(path)
                return path, Snapshot(*read_prompt_files(path)), stat
            except SoftpromptError:
                if self._resolve(relative) == path:
                    raise
        raise SoftpromptError(f"prompt folder {relative!r} kept changing while it was read")

    def _parse(self, snapshot: Snapshot, path: Path) -> tuple[Tensor, PromptMetadata]:
        weight, metadata = prompt_from_files(snapshot.weights, snapshot.metadata, path)
        check_compatible(metadata, str(path), self.model.adapter, self.allow_other_backbone)
        return weight, metadata

    def _is_own(self, name: str, path: Path) -> bool:
        return (self.root / name).resolve() == path


def load_server_model(config: ServeConfig) -> tuple[PromptedModel, PromptDirectory]:
    """The backbone (named, else the first prompt folder's, else the packaged default) wearing every prompt of the directory."""
    root = Path(config.prompts)
    if not root.is_dir():
        raise SoftpromptError(f"{root}: prompt directory not found (--prompts)")
    folders = prompt_folders(root)
    name = config.model or (load_prompt(folders[0])[1].backbone if folders else None) or DEFAULT_BACKBONE
    model = PromptedModel(load_backbone(BackboneSpec(name, config.dtype, config.device))).eval()
    model.adapter.enable_prefix_cache(int(config.prompt_cache_mb * 2**20))
    directory = PromptDirectory(root, model, config.allow_other_backbone, writable=config.prompts_writable)
    directory.load_all()
    return model, directory
