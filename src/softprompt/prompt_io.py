"""Prompt files: `prompt.safetensors` (the [p, e] matrix) beside `prompt.json` (what it is for).

The metadata is everything needed to use the prompt again without repeating how it was trained:
its task (a custom task's spec included), labels, target format and lengths, and the backbone's
kind and embedding fingerprint, so loading onto another backbone is refused unless overridden,
and onto the other kind always.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from . import __version__
from .config import check_fields
from .errors import SoftpromptError
from .files import atomic_path, write_json_atomic

if TYPE_CHECKING:
    from .backbones import Backbone

WEIGHTS_NAME = "prompt.safetensors"
METADATA_NAME = "prompt.json"
TENSOR_KEY = "prompt"
LEGACY_KIND_KEY = "is_encoder_decoder"  # where files before the kind field kept it, in `extra`


@dataclass
class PromptMetadata:
    """What `prompt.json` holds."""

    length: int
    width: int
    init: str
    task: str | None = None
    task_spec: dict[str, Any] | None = None  # a custom task's CustomTaskSpec.to_dict(): files, template, target field, labels
    labels: list[str] | None = None
    target_format: str = "plain"
    max_input_length: int = 512
    max_target_length: int = 16
    backbone: str | None = None
    backbone_kind: str | None = None  # "encoder-decoder" or "decoder-only"
    backbone_fingerprint: str | None = None
    step: int | None = None
    metrics: dict[str, Any] | None = None
    library_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> PromptMetadata:
        """Parse and type-check `prompt.json`; older files (kind, step and metrics in `extra`) are migrated."""
        if not isinstance(raw, dict):
            raise SoftpromptError(f"{source}: expected a JSON object")
        raw = dict(raw)
        extra = dict(raw.get("extra") or {})
        if "backbone_kind" not in raw and LEGACY_KIND_KEY in extra:
            raw["backbone_kind"] = "encoder-decoder" if extra.pop(LEGACY_KIND_KEY) else "decoder-only"
        for moved in ("step", "metrics"):
            if moved not in raw and moved in extra:
                raw[moved] = extra.pop(moved)
        raw["extra"] = extra
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and
                   f.default_factory is dataclasses.MISSING and f.name not in raw]
        if missing:
            raise SoftpromptError(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(raw) - names)
        if unknown:
            raise SoftpromptError(f"{source}: unknown field(s) {', '.join(unknown)}")
        metadata = cls(**raw)
        check_fields(metadata, prefix=f"{source}: field ")
        return metadata


def save_prompt(directory: str | os.PathLike, weight: torch.Tensor, metadata: PromptMetadata) -> Path:
    """Write both files atomically, so an interrupted save never leaves a mixed pair."""
    directory = Path(directory)
    if tuple(weight.shape) != (metadata.length, metadata.width):
        raise ValueError(f"weight {tuple(weight.shape)} does not match metadata")
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file({TENSOR_KEY: weight.detach().to("cpu", torch.float32).contiguous()}, str(tmp))
    write_json_atomic(directory / METADATA_NAME, asdict(metadata))
    return directory


def load_prompt(directory: str | os.PathLike) -> tuple[torch.Tensor, PromptMetadata]:
    """Read a prompt directory, checking that the two files agree.

    Raises SoftpromptError naming the file when it is missing, truncated, corrupt, of the wrong
    shape, or holds a field of the wrong type.
    """
    directory = Path(directory)
    weights_path, meta_path = directory / WEIGHTS_NAME, directory / METADATA_NAME
    for path in (weights_path, meta_path):
        if not path.is_file():
            raise SoftpromptError(f"{path}: prompt file not found")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SoftpromptError(f"{meta_path}: not a valid prompt metadata file ({err})") from None
    metadata = PromptMetadata.from_dict(raw, str(meta_path))
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SoftpromptError(f"{weights_path}: truncated or corrupt prompt file ({err})") from None
    return checked_weight(tensors, metadata, str(weights_path), meta_path.name), metadata


def prompt_from_bytes(weights: bytes, raw_metadata: Any, source: str) -> tuple[torch.Tensor, PromptMetadata]:
    """A prompt sent as data (an upload): the bytes of `prompt.safetensors` and the object of `prompt.json`.

    The same checks as `load_prompt`; raises SoftpromptError naming `source`.
    """
    metadata = PromptMetadata.from_dict(raw_metadata, f"{source} metadata")
    try:
        tensors = load(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise SoftpromptError(f"{source} weights: truncated or corrupt prompt file ({err})") from None
    return checked_weight(tensors, metadata, f"{source} weights", f"{source} metadata"), metadata


def checked_weight(tensors: dict[str, torch.Tensor], metadata: PromptMetadata, source: str, meta_source: str) -> torch.Tensor:
    """The one prompt tensor of a file, refused unless its shape matches the metadata and its values are finite."""
    if set(tensors) != {TENSOR_KEY}:
        raise SoftpromptError(f"{source}: expected one tensor named {TENSOR_KEY!r}, found {sorted(tensors)}")
    weight = tensors[TENSOR_KEY]
    if tuple(weight.shape) != (metadata.length, metadata.width):
        raise SoftpromptError(f"{source}: shape {tuple(weight.shape)} does not match {meta_source} ({metadata.length}, {metadata.width})")
    if not torch.isfinite(weight).all():
        raise SoftpromptError(f"{source}: prompt holds NaN or infinite values")
    return weight


def check_compatible(metadata: PromptMetadata, source: str, backbone: Backbone, allow_other_backbone: bool = False) -> None:
    """Refuse a prompt made for another backbone: its vectors would mean nothing there.

    A different width or kind is always refused; a different embedding table unless
    `allow_other_backbone` (a prompt moved to a close relative of its backbone, deliberately).
    """
    if metadata.width != backbone.width:
        raise SoftpromptError(f"{source}: prompt width {metadata.width} does not match the backbone's embedding width {backbone.width}")
    if metadata.backbone_kind and metadata.backbone_kind != backbone.kind:
        raise SoftpromptError(f"{source}: prompt was made for a {metadata.backbone_kind} backbone; "
                              f"{backbone.name!r} is {backbone.kind}")
    recorded = metadata.backbone_fingerprint
    if recorded and not allow_other_backbone and not backbone.matches_fingerprint(recorded):
        raise SoftpromptError(
            f"{source}: prompt was trained on backbone {metadata.backbone!r} (embedding fingerprint "
            f"{recorded}), not this one ({backbone.fingerprint()}); pass --allow-other-backbone to load it anyway"
        )
