"""Prompt files: `prompt.safetensors` (the [p, e] matrix) beside `prompt.json` (what it is for).

A prompt is only meaningful on the backbone it was trained with, so the metadata carries a
fingerprint of that backbone's embedding table and loading onto another backbone is refused
unless the caller overrides it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import SoftpromptError
from .files import atomic_path, write_json_atomic

WEIGHTS_NAME = "prompt.safetensors"
METADATA_NAME = "prompt.json"
TENSOR_KEY = "prompt"


@dataclass
class PromptMetadata:
    """What `prompt.json` holds."""

    length: int
    width: int
    init: str
    task: str | None = None
    labels: list[str] | None = None
    backbone: str | None = None
    backbone_fingerprint: str | None = None
    target_format: str = "plain"
    library_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)


def embedding_fingerprint(embeddings: torch.Tensor) -> str:
    """A short hash of the embedding table: equal tables (and only they) give equal fingerprints."""
    data = embeddings.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


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

    Raises SoftpromptError naming the file when it is missing, truncated, corrupt or of the
    wrong shape.
    """
    directory = Path(directory)
    weights_path, meta_path = directory / WEIGHTS_NAME, directory / METADATA_NAME
    for path in (weights_path, meta_path):
        if not path.is_file():
            raise SoftpromptError(f"{path}: prompt file not found")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        metadata = PromptMetadata(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
        raise SoftpromptError(f"{meta_path}: not a valid prompt metadata file ({err})") from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SoftpromptError(f"{weights_path}: truncated or corrupt prompt file ({err})") from None
    if set(tensors) != {TENSOR_KEY}:
        raise SoftpromptError(f"{weights_path}: expected one tensor named {TENSOR_KEY!r}, found {sorted(tensors)}")
    weight = tensors[TENSOR_KEY]
    if tuple(weight.shape) != (metadata.length, metadata.width):
        raise SoftpromptError(
            f"{weights_path}: shape {tuple(weight.shape)} does not match "
            f"{meta_path.name} ({metadata.length}, {metadata.width})"
        )
    if not torch.isfinite(weight).all():
        raise SoftpromptError(f"{weights_path}: prompt holds NaN or infinite values")
    return weight, metadata


def check_compatible(metadata: PromptMetadata, source: str, width: int, fingerprint: str, allow_other_backbone: bool) -> None:
    """Refuse a prompt made for another backbone: its vectors would mean nothing there."""
    if metadata.width != width:
        raise SoftpromptError(f"{source}: prompt width {metadata.width} does not match the backbone's embedding width {width}")
    if metadata.backbone_fingerprint and metadata.backbone_fingerprint != fingerprint and not allow_other_backbone:
        raise SoftpromptError(
            f"{source}: prompt was trained on backbone {metadata.backbone!r} (embedding fingerprint "
            f"{metadata.backbone_fingerprint}), not this one ({fingerprint}); pass --allow-other-backbone to load it anyway"
        )
