"""Prompts in other tools' formats: PEFT prompt-tuning adapters and the reference code's `.npy` files.

Each format is one module with an `export_*(prompt_dir, out, ...)` that reads our prompt files
and an `import_*(path, out_dir, model=None, task=None, labels=None)` that writes them.
`export_prompt` / `import_prompt` pick the module by format name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SoftpromptError
from ..prompt_io import PromptMetadata, save_prompt

if TYPE_CHECKING:
    from ..backbones import Backbone

# Where an imported prompt came from is kept in `PromptMetadata.extra` under this key.
SOURCE_KEY = "source"
KINDS = {True: "encoder-decoder", False: "decoder-only"}  # PromptMetadata.backbone_kind, keyed by is_encoder_decoder


def save_imported(
    weight: torch.Tensor,
    out_dir: str | os.PathLike,
    source: Path,
    fmt: str,
    model: Backbone | None,
    task: str | None,
    labels: Sequence[str] | None,
    backbone: str | None = None,
    is_encoder_decoder: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a [p, e] matrix read from `source` as our prompt files, checked against `model` if given.

    With a model, the metadata records its name and embedding fingerprint (so the prompt is
    later refused on other backbones); without one, `backbone` is recorded as a bare name.
    Raises SoftpromptError naming `source` for a matrix that is not 2-D, not finite, or not of
    the model's width, or made for the other backbone kind.
    """
    if weight.ndim != 2 or min(weight.shape) < 1:
        raise SoftpromptError(f"{source}: expected a [length, width] prompt matrix, found shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise SoftpromptError(f"{source}: prompt holds NaN or infinite values")
    length, width = weight.shape
    if model is not None:
        if width != model.width:
            raise SoftpromptError(f"{source}: prompt width {width} does not match the backbone's embedding width {model.width}")
        model_is_encoder_decoder = model.kind == KINDS[True]
        if is_encoder_decoder is not None and is_encoder_decoder != model_is_encoder_decoder:
            made_for = "an encoder-decoder" if is_encoder_decoder else "a decoder-only"
            raise SoftpromptError(f"{source}: prompt was made for {made_for} backbone, {model.name!r} is not one")
        backbone, is_encoder_decoder = model.name, model_is_encoder_decoder
    info: dict[str, Any] = {SOURCE_KEY: {"format": fmt, "path": str(source)}, **(extra or {})}
    metadata = PromptMetadata(
        length=length, width=width, init=fmt, task=task, labels=list(labels) if labels else None,
        backbone=backbone or None, backbone_kind=KINDS[is_encoder_decoder] if is_encoder_decoder is not None else None,
        backbone_fingerprint=model.fingerprint() if model is not None else None, extra=info,
    )
    return save_prompt(out_dir, weight.detach().to("cpu", torch.float32), metadata)


# The format modules use `save_imported` above, so they are imported after it.
from .npy import export_npy, import_npy  # noqa: E402
from .peft import export_peft, import_peft  # noqa: E402

EXPORTERS = {"peft": export_peft, "npy": export_npy}
IMPORTERS = {"peft": import_peft, "npy": import_npy}
FORMATS = tuple(EXPORTERS)


def _pick(table: dict, fmt: str):
    if fmt not in table:
        raise SoftpromptError(f"unknown prompt format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return table[fmt]


def export_prompt(prompt_dir: str | os.PathLike, out: str | os.PathLike, fmt: str, **options: Any) -> Path:
    """Write the prompt in `prompt_dir` in another tool's format `fmt` ("peft" or "npy").

    `options` go to the format's exporter (e.g. `is_encoder_decoder` for "peft").
    Raises SoftpromptError for an unknown format or an unreadable prompt.
    """
    return _pick(EXPORTERS, fmt)(prompt_dir, out, **options)


def import_prompt(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str,
    model: Backbone | None = None,
    task: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Turn a prompt in format `fmt` ("peft" adapter directory or "npy" file) into our prompt files.

    Raises SoftpromptError for an unknown format or a file that is unreadable, of the wrong
    shape, or of another width than `model`'s embeddings.
    """
    return _pick(IMPORTERS, fmt)(path, out_dir, model=model, task=task, labels=labels)


__all__ = ["FORMATS", "export_prompt", "import_prompt", "export_peft", "import_peft", "export_npy", "import_npy"]
