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
from safetensors.torch import load, save_file

from . import __version__
from .config import at_least, check_fields
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
    shape or dtype, holds a field of the wrong type or out of range, or values no training makes.
    """
    return prompt_from_files(*read_prompt_files(directory), directory)


def read_prompt_files(directory: str | os.PathLike) -> tuple[bytes, bytes]:
    """The bytes of a folder's `prompt.safetensors` and `prompt.json`, read once.

    A caller that also hashes the files (the server, to notice a changed folder) parses these
    same bytes with `prompt_from_files`, so what it loads is exactly what it hashed.
    """
    directory = Path(directory)
    contents = []
    for path in (directory / WEIGHTS_NAME, directory / METADATA_NAME):
        if not path.is_file():
            raise SoftpromptError(f"{path}: prompt file not found")
        try:
            contents.append(path.read_bytes())
        except OSError as err:
            raise SoftpromptError(f"{path}: cannot read prompt file ({err.strerror or err})") from None
    return contents[0], contents[1]


def prompt_from_files(weights: bytes, metadata: bytes, directory: str | os.PathLike) -> tuple[torch.Tensor, PromptMetadata]:
    """`load_prompt` on bytes already read from `directory`; messages name its two files.

    A folder may hold a prompt of length 0: model tuning writes one beside its tuned backbone.
    """
    directory = Path(directory)
    weights_path, meta_path = directory / WEIGHTS_NAME, directory / METADATA_NAME
    try:
        raw = json.loads(metadata.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SoftpromptError(f"{meta_path}: not a valid prompt metadata file ({err})") from None
    parsed = PromptMetadata.from_dict(raw, str(meta_path))
    check_metadata(parsed, str(meta_path), min_length=0)
    try:
        tensors = load(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise SoftpromptError(f"{weights_path}: truncated or corrupt prompt file ({err})") from None
    return checked_weight(tensors, parsed, str(weights_path), meta_path.name), parsed


def prompt_from_bytes(weights: bytes, raw_metadata: Any, source: str) -> tuple[torch.Tensor, PromptMetadata]:
    """A prompt sent as data (an upload): the bytes of `prompt.safetensors` and the object of `prompt.json`.

    The same checks as `load_prompt`, and a length of at least 1 (an empty prompt only makes sense
    beside the model-tuned backbone its run saved); raises SoftpromptError naming `source`.
    """
    metadata = PromptMetadata.from_dict(raw_metadata, f"{source} metadata")
    check_metadata(metadata, f"{source} metadata", min_length=1)
    try:
        tensors = load(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise SoftpromptError(f"{source} weights: truncated or corrupt prompt file ({err})") from None
    return checked_weight(tensors, metadata, f"{source} weights", f"{source} metadata"), metadata


MAX_LENGTH = 100_000  # far past any backbone's positions: a bigger number is a broken or hostile file
MAX_LABELS = 10_000
MAX_ROW_NORM = 1e4  # embedding rows have norms in the tens at most; a prompt this far out is not a trained one
FLOAT_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
OTHER_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
                torch.int64: "I64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def check_metadata(metadata: PromptMetadata, source: str, min_length: int = 1) -> None:
    """Refuse numbers no prompt has, as a training config's are refused, before any tensor is read.

    The types are already checked (`from_dict`); these are the ranges a server must not trust an
    upload with: lengths and widths that size allocations, and labels that rank classification
    scores one by one.
    """
    prefix = f"{source}: field "
    at_least(metadata, min_length, "length", prefix=prefix)
    at_least(metadata, 1, "width", "max_input_length", "max_target_length", prefix=prefix)
    if metadata.length > MAX_LENGTH:
        raise SoftpromptError(f"{prefix}length={metadata.length} must be at most {MAX_LENGTH}")
    labels = metadata.labels
    if labels is None:
        return
    if not 1 <= len(labels) <= MAX_LABELS:
        raise SoftpromptError(f"{prefix}labels has {len(labels)} entries; give 1 to {MAX_LABELS}, or null for free text")
    blank = [i for i, label in enumerate(labels) if not label.strip()]
    if blank:
        raise SoftpromptError(f"{prefix}labels[{blank[0]}] is empty")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise SoftpromptError(f"{prefix}labels holds {label!r} twice")
        seen.add(label)


def checked_weight(tensors: dict[str, torch.Tensor], metadata: PromptMetadata, source: str, meta_source: str) -> torch.Tensor:
    """The one prompt tensor of a file as fp32, refused unless its shape matches the metadata and its values are sane.

    Only floating types are prompts (an integer or boolean tensor is not one, and fp8 loses what
    training learnt); the cast to fp32 comes before the finite check, since fp32 is what the bank
    keeps and an F64 1e300 is infinite there.
    """
    if set(tensors) != {TENSOR_KEY}:
        raise SoftpromptError(f"{source}: expected one tensor named {TENSOR_KEY!r}, found {sorted(tensors)}")
    weight = tensors[TENSOR_KEY]
    if weight.dtype not in FLOAT_DTYPES:
        name = OTHER_DTYPES.get(weight.dtype, str(weight.dtype).removeprefix("torch."))
        raise SoftpromptError(f"{source}: tensor {TENSOR_KEY!r} has dtype {name}; a prompt is {', '.join(FLOAT_DTYPES.values())}")
    if tuple(weight.shape) != (metadata.length, metadata.width):
        raise SoftpromptError(f"{source}: shape {tuple(weight.shape)} does not match {meta_source} ({metadata.length}, {metadata.width})")
    weight = weight.to(torch.float32)
    if not torch.isfinite(weight).all():
        raise SoftpromptError(f"{source}: prompt holds NaN or infinite values (in fp32)")
    norms = weight.double().norm(dim=1) if len(weight) else weight.new_zeros(1, dtype=torch.float64)
    row = int(norms.argmax())
    if norms[row] > MAX_ROW_NORM:
        raise SoftpromptError(f"{source}: row {row} has L2 norm {float(norms[row]):.3g}, over {MAX_ROW_NORM:,.0f}; "
                              "not a trained prompt (embedding rows are far smaller)")
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
