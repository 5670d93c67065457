"""A pretraining run folder: a Hugging Face checkpoint plus what an exact resume needs.

  config.json, model.safetensors, generation_config.json   the model (save_pretrained)
  tokenizer.json, tokenizer_config.json                      its tokenizer
  trainer_state.pt        optimizer, schedule, loss scaler, step, random states, token counts, elapsed time
  train_log.jsonl         {"step", "loss", "lr", ...} every `log_every` steps; eval records add "val_loss" etc.
  pretrain_summary.json   written with the last checkpoint of a call; "complete": true once all steps ran
With `snapshot_every`, the model alone (weights, tokenizer, snapshot.json) is also kept every N steps
beside the run, in OUT-snapshots/step-N: a checkpoint replaces the whole run folder, so snapshots
inside it would not survive the next one.
Each checkpoint is built in a temporary folder and swapped in by rename, so a crash leaves the
previous checkpoint whole. `trainer_state.pt` holds tensors and plain values only, so it loads
with `weights_only=True`.

The folder is a `RunDir` (the run component every training loop uses: the resume check against
the saved settings, the log trimmed to the checkpoint on resume, one writer rank) whose checkpoint
is the whole folder rather than one file: `PretrainFolder`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from ..errors import SoftpromptError
from ..files import atomic_folder, recover_folder, write_json_atomic
from ..run import RunDir
from . import tokenizer as tok_lib
from .config import RESUMABLE

STATE_FILE, LOG_FILE, SUMMARY_FILE = "trainer_state.pt", "train_log.jsonl", "pretrain_summary.json"
SNAPSHOT_FILE = "snapshot.json"
# 2: random states as run.random_states() gives them (python, numpy, torch, cuda), the loss scaler's state,
#    and the precision setting in the config. 1: torch's CPU and CUDA generators only, no precision (read as "auto").
STATE_FORMAT = 2


# --- model checkpoints -----------------------------------------------------------------------------


def is_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in weights)


def load_model(folder: str | os.PathLike) -> T5ForConditionalGeneration:
    """A T5 checkpoint in fp32. Raises SoftpromptError if `folder` is not one."""
    if not is_checkpoint(folder):
        raise SoftpromptError(f"{folder}: not a model checkpoint (config.json and model weights expected)")
    model_type = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "t5":
        raise SoftpromptError(f"{Path(folder) / 'config.json'}: model_type {model_type!r}, pretraining needs 't5'")
    return T5ForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)


def check_vocab(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """The model's embedding rows must be the tokenizer's ids; raises SoftpromptError otherwise."""
    rows = model.get_input_embeddings().num_embeddings
    if rows != len(tokenizer):
        raise SoftpromptError(f"{where}: tokenizer has {len(tokenizer)} ids but the model's embedding has {rows} rows")


def package_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Copy a finished checkpoint in float16 with its model card and summary, for shipping inside the package.

    Half precision halves the size; `softprompt.backbones.load_backbone` reads it back as float32.
    Raises SoftpromptError if `checkpoint` is not a checkpoint.
    """
    model, checkpoint = load_model(checkpoint), Path(checkpoint)
    with atomic_folder(out_dir) as tmp:
        model.to(torch.float16).save_pretrained(tmp)
        tok_lib.save_tokenizer(tok_lib.load_tokenizer(checkpoint), tmp)
        for name in ("README.md", SUMMARY_FILE, LOG_FILE):
            if (checkpoint / name).is_file():
                (tmp / name).write_bytes((checkpoint / name).read_bytes())
    return Path(out_dir)


# --- the run folder --------------------------------------------------------------------------------


def is_run(out_dir: str | os.PathLike) -> bool:
    recover_folder(out_dir)
    return (Path(out_dir) / STATE_FILE).is_file()


def read_summary(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_complete(out_dir: str | os.PathLike) -> bool:
    summary = read_summary(out_dir) if is_run(out_dir) else None
    return bool(summary and summary.get("complete"))


class PretrainFolder(RunDir):
    """A pretraining run folder: its settings live in `trainer_state.pt`, its checkpoint is the whole folder.

    `model` and `tokenizer` must be set before the first checkpoint: each checkpoint writes them,
    the trainer state, and the log and summary so far into a temporary folder that then replaces the run's.
    """

    def __init__(self, out_dir: str | os.PathLike, config: dict[str, Any], writer: bool = True):
        super().__init__(out_dir, config, RESUMABLE, resume=True, markers=(STATE_FILE,), checkpoint_name=STATE_FILE,
                         writer=writer, log_name=LOG_FILE, result_name=SUMMARY_FILE, run_file=None)
        self.model: T5ForConditionalGeneration | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._state: dict[str, Any] | None = None  # read once for the settings check and the resume

    @property
    def started(self) -> bool:
        if self.writer:
            recover_folder(self.output)  # a crash between the renames of a checkpoint's swap
        return super().started

    def saved_config(self) -> dict[str, Any]:
        return self.load_checkpoint()["config"]

    def load_checkpoint(self) -> dict[str, Any] | None:
        if self._state is None and self.checkpoint_path.is_file():
            self._state = load_state(self.output)
        return self._state

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Model, tokenizer, trainer state, log and summary in a temporary folder, then swapped in."""
        self._state = None
        if not self.writer:
            return
        with atomic_folder(self.output) as tmp:
            self.model.save_pretrained(tmp)
            tok_lib.save_tokenizer(self.tokenizer, tmp)
            ranks = {"random_ranks": [_portable(r) for r in state["random_ranks"]]} if state.get("random_ranks") else {}
            torch.save({**state, "random": _portable(state["random"]), **ranks}, tmp / STATE_FILE)
            for path in (self.log_path, self.result_path):
                if path.is_file():
                    shutil.copyfile(path, tmp / path.name)


def snapshots_dir(out_dir: str | os.PathLike) -> Path:
    """OUT-snapshots: where a run's kept models go, beside the run folder (see the module docstring)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + "-snapshots")


def save_snapshot(out_dir: Path, model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, step: int,
                  objective: str) -> Path:
    """The model at `step` as a loadable backbone in OUT-snapshots/step-N (replaced whole when redone after a resume)."""
    path = snapshots_dir(out_dir) / f"step-{step}"
    with atomic_folder(path) as tmp:
        model.save_pretrained(tmp)
        tok_lib.save_tokenizer(tokenizer, tmp)
        write_json_atomic(tmp / SNAPSHOT_FILE, {"step": step, "objective": objective, "run": str(out_dir)})
    return path


def read_snapshots(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of each snapshot kept beside the run in `out_dir`, by step; raises SoftpromptError for a torn one."""
    folder = snapshots_dir(out_dir)
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith("."):  # a snapshot being written
            continue
        info = path / SNAPSHOT_FILE
        if not info.is_file() or not is_checkpoint(path):
            raise SoftpromptError(f"{path}: not a snapshot ({SNAPSHOT_FILE} and model weights expected)")
        found.append((int(json.loads(info.read_text(encoding="utf-8"))["step"]), path))
    return sorted(found)


def load_state(out_dir: Path) -> dict[str, Any]:
    """The trainer state of the run in `out_dir`, in the current format (format 1 is upgraded).

    Raises SoftpromptError for an unreadable file or a format this version does not know.
    """
    path = out_dir / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: say which, do not crash
        raise SoftpromptError(f"{path}: unreadable trainer state ({type(err).__name__}: {err})") from None
    version = state.get("format") if isinstance(state, dict) else None
    if version == 1:
        return _from_format_1(state)
    if version != STATE_FORMAT:
        raise SoftpromptError(f"{path}: trainer state format {version!r}; this softprompt reads formats 1 to {STATE_FORMAT}")
    ranks = {"random_ranks": [_native(r) for r in state["random_ranks"]]} if state.get("random_ranks") else {}
    return {**state, "random": _native(state["random"]), **ranks}


def _from_format_1(state: dict) -> dict[str, Any]:
    """Format 1 kept torch's generators only (the loop draws from no other) and had no precision setting:
    its runs autocast as "auto" does. Python's and numpy's generators are left as they are."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": state["rng_cpu"]}
    if state["rng_cuda"]:
        states["cuda"] = state["rng_cuda"]
    rest = {k: v for k, v in state.items() if k not in ("rng_cpu", "rng_cuda")}
    return {**rest, "format": STATE_FORMAT, "config": {"precision": "auto", **state["config"]}, "random": states,
            "scaler": {}}


def _portable(states: dict[str, Any]) -> dict[str, Any]:
    """numpy's generator state with its key array as a tensor, so the file loads with weights_only=True."""
    name, keys, *rest = states["numpy"]
    return {**states, "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), *rest)}


def _native(states: dict[str, Any]) -> dict[str, Any]:
    name, keys, *rest = states["numpy"]
    return {**states, "numpy": (name, keys.numpy().astype(np.uint32), *rest)}
