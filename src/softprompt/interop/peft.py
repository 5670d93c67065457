"""Hugging Face PEFT prompt-tuning adapters: `adapter_config.json` + `adapter_model.safetensors`.

What PEFT 0.21 does with such an adapter (read from its source, checked by tests/test_interop.py):
- the weights are one tensor `prompt_embeddings` of shape
  (num_virtual_tokens * num_transformer_submodules, token_dim);
- `num_transformer_submodules` defaults to 2 for SEQ_2_SEQ_LM, 1 otherwise. For prompt tuning
  of a seq2seq model PEFT puts only the first num_virtual_tokens rows in front of the encoder
  input; the second half is allocated, trained never and saved anyway. With 1, the table is
  exactly the p rows, still encoder-only, and the decoder and labels are untouched: the paper's
  setup. Exports therefore write num_transformer_submodules = 1;
- for CAUSAL_LM, PEFT puts the prompt in front of the whole padded row and drops position_ids,
  so with left padding the prompt sits before the pads and the real tokens' positions shift by
  the padding. Without padding it is the same computation as softprompt's decoder-only adapter.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import SoftpromptError
from ..files import atomic_path, write_json_atomic
from ..prompt_io import PromptMetadata, load_prompt
from . import KINDS, save_imported

if TYPE_CHECKING:
    from ..backbones import Backbone

FORMAT = "peft"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # what PEFT writes with safe_serialization=False
TENSOR_KEY = "prompt_embeddings"
TASK_TYPES = {True: "SEQ_2_SEQ_LM", False: "CAUSAL_LM"}  # keyed by is_encoder_decoder


def backbone_kind(metadata: PromptMetadata, prompt_dir: Path, is_encoder_decoder: bool | None) -> bool:
    """Whether the prompt is for an encoder-decoder backbone.

    Taken from the argument, else the metadata's `extra`, else the `config.json` of a local
    backbone directory named in the metadata (the hub is never asked).
    Raises SoftpromptError when none of them says, or the argument contradicts the metadata.
    """
    recorded = None if metadata.backbone_kind is None else metadata.backbone_kind == KINDS[True]
    local_config = Path(metadata.backbone) / "config.json" if metadata.backbone else None
    if recorded is None and local_config is not None and local_config.is_file():
        try:
            config = json.loads(local_config.read_text(encoding="utf-8"))
            recorded = bool(config.get("is_encoder_decoder", False))  # absent means the default, False
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            recorded = None  # an unreadable backbone config says nothing
    if is_encoder_decoder is not None and recorded is not None and bool(recorded) != is_encoder_decoder:
        raise SoftpromptError(
            f"{prompt_dir}: prompt was made for {'an encoder-decoder' if recorded else 'a decoder-only'} backbone, "
            f"but is_encoder_decoder={is_encoder_decoder} was given"
        )
    if is_encoder_decoder is None and recorded is None:
        raise SoftpromptError(
            f"{prompt_dir}: the metadata does not say whether backbone {metadata.backbone!r} is encoder-decoder; "
            "pass is_encoder_decoder"
        )
    return bool(recorded) if is_encoder_decoder is None else is_encoder_decoder


def export_peft(prompt_dir: str | os.PathLike, out_dir: str | os.PathLike, is_encoder_decoder: bool | None = None) -> Path:
    """Write our prompt as a PEFT prompt-tuning adapter that `PeftModel.from_pretrained` loads.

    The config comes from a real `peft.PromptTuningConfig`, so it holds every field PEFT expects;
    num_transformer_submodules = 1 keeps the table at exactly p rows (see the module docstring).
    Raises SoftpromptError for an unreadable prompt, an unknown backbone kind, or an `out_dir`
    that is a file.
    """
    from peft import PromptTuningConfig  # imported here: only this function needs the library

    prompt_dir, out_dir = Path(prompt_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SoftpromptError(f"{out_dir}: an adapter is a directory, and this is a file")
    weight, metadata = load_prompt(prompt_dir)
    encoder_decoder = backbone_kind(metadata, prompt_dir, is_encoder_decoder)
    config = PromptTuningConfig(
        task_type=TASK_TYPES[encoder_decoder],
        num_virtual_tokens=metadata.length,
        token_dim=metadata.width,
        num_transformer_submodules=1,
        prompt_tuning_init="RANDOM",  # the weights are loaded over it; RANDOM needs no tokenizer
        base_model_name_or_path=metadata.backbone,
        inference_mode=True,  # as PeftModel.save_pretrained writes it
    )
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file({TENSOR_KEY: weight.contiguous()}, str(tmp), metadata={"format": "pt"})  # (p, e)
    write_json_atomic(out_dir / CONFIG_NAME, json_ready(config.to_dict()))
    return out_dir


def json_ready(config: dict[str, Any]) -> dict[str, Any]:
    """PEFT's `to_dict` holds enums and sets; its own save turns them into strings and lists."""
    plain = {}
    for key, value in config.items():
        if isinstance(value, set):
            value = sorted(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        plain[key] = value
    return plain


def read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / CONFIG_NAME
    if not path.is_file():
        raise SoftpromptError(f"{path}: adapter config not found")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SoftpromptError(f"{path}: not a valid adapter config ({err})") from None
    if not isinstance(config, dict):
        raise SoftpromptError(f"{path}: not a valid adapter config (expected a JSON object)")
    if config.get("peft_type") != "PROMPT_TUNING":
        raise SoftpromptError(f"{path}: peft_type is {config.get('peft_type')!r}; only PROMPT_TUNING adapters hold a soft prompt")
    if config.get("task_type") not in TASK_TYPES.values():
        raise SoftpromptError(f"{path}: task_type is {config.get('task_type')!r}; expected one of {', '.join(TASK_TYPES.values())}")
    for key in ("num_virtual_tokens", "token_dim"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise SoftpromptError(f"{path}: {key} must be a positive integer, found {config.get(key)!r}")
    return config


def read_weights(adapter_dir: Path) -> tuple[torch.Tensor, Path]:
    path = adapter_dir / WEIGHTS_NAME
    legacy = adapter_dir / LEGACY_WEIGHTS_NAME
    try:
        if path.is_file():
            tensors = load_file(str(path))
        elif legacy.is_file():
            path = legacy
            tensors = torch.load(legacy, map_location="cpu", weights_only=True)
        else:
            raise SoftpromptError(f"{path}: adapter weights not found")
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as err:
        raise SoftpromptError(f"{path}: truncated or corrupt adapter weights ({str(err).splitlines()[0]})") from None
    if not isinstance(tensors, dict) or not isinstance(tensors.get(TENSOR_KEY), torch.Tensor):
        found = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
        raise SoftpromptError(f"{path}: no tensor named {TENSOR_KEY!r} (found {found})")
    return tensors[TENSOR_KEY], path


def import_peft(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: Backbone | None = None,
    task: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Turn a PEFT prompt-tuning adapter into our prompt files in `out_dir`.

    A seq2seq adapter saved with PEFT's default num_transformer_submodules = 2 holds 2p rows;
    PEFT feeds only the first p to the encoder and never uses the rest, so the first p are
    imported. With `model`, the width and backbone kind are checked and its name and embedding
    fingerprint recorded; without one, the adapter's base_model_name_or_path is recorded.
    Raises SoftpromptError naming the file for an adapter that is not PROMPT_TUNING, or whose
    weights are missing, corrupt, of the wrong shape or not finite.
    """
    adapter_dir = Path(adapter_dir)
    config = read_config(adapter_dir)
    weight, weights_path = read_weights(adapter_dir)
    p, e = config["num_virtual_tokens"], config["token_dim"]
    encoder_decoder = config["task_type"] == TASK_TYPES[True]
    submodules = config.get("num_transformer_submodules") or (2 if encoder_decoder else 1)  # PEFT's default
    if submodules not in (1, 2):
        raise SoftpromptError(f"{adapter_dir / CONFIG_NAME}: num_transformer_submodules must be 1 or 2, found {submodules!r}")
    expected = (p * submodules, e)
    if tuple(weight.shape) != expected:
        raise SoftpromptError(
            f"{weights_path}: {TENSOR_KEY} has shape {tuple(weight.shape)}, but {CONFIG_NAME} "
            f"(num_virtual_tokens={p}, num_transformer_submodules={submodules}, token_dim={e}) needs {expected}"
        )
    extra = {"peft": {key: config.get(key) for key in ("task_type", "num_transformer_submodules", "prompt_tuning_init")}}
    return save_imported(
        weight[:p].float(), out_dir, weights_path, FORMAT, model, task, labels,  # (p, e): the encoder's rows
        backbone=config.get("base_model_name_or_path"), is_encoder_decoder=encoder_decoder, extra=extra,
    )
