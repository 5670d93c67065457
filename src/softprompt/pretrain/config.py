"""The settings of one pretraining stage, as a typed dataclass from which the command line is generated.

Each field carries one line of help (`setting(default, help)`); `__post_init__` refuses impossible
values with a message naming the field, before anything is loaded or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import at_least, check_fields, setting
from ..errors import SoftpromptError
from .presets import ModelSize

Objective = Literal["span-corruption", "lm-adapt"]
OptimizerName = Literal["adamw-scale", "adamw"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

# Settings that may change when a run is resumed: they do not change which updates are made.
RESUMABLE = {"max_minutes", "device", "compile", "prefetch", "progress", "log_every", "eval_every",
             "eval_batches", "checkpoint_every", "snapshot_every"}


@dataclass
class PretrainConfig:
    """One pretraining stage; saved in pretrain_summary.json and trainer_state.pt."""

    objective: Objective = setting("span-corruption", "span-corruption, or lm-adapt: prefix LM from an existing checkpoint "
                                   "(Lester et al. 2021)")
    model: ModelSize = setting("micro", "size preset for a new model: tiny, nano, micro, mini (presets.PRESETS); "
                               "lm-adapt keeps its checkpoint's size", flag="size")
    steps: int = setting(20_000, "optimizer steps, also the length of the cosine schedule")
    batch_size: int = setting(128, "sequences per step (T5: 128)")
    inputs_length: int = setting(256, "encoder tokens incl. </s> (T5: 512; 256 keeps small-model pretraining cheap)")
    targets_length: int = setting(256, "lm-adapt only: continuation + </s>; span corruption derives its own (58 for 256)")
    noise_density: float = setting(0.15, "span corruption: fraction of tokens replaced by sentinels (T5)")
    mean_noise_span_length: float = setting(3.0, "span corruption: mean length of a replaced span (T5)")
    optimizer: OptimizerName = setting("adamw-scale", "AdamW with Adafactor-style relative steps (optimizer.py; nanoT5), "
                                       "or plain adamw")
    lr: float = setting(2e-2, "peak rate, relative for adamw-scale (nanoT5; beat 1e-2 in a 1k-step H200 check); "
                        "plain adamw: ~1e-3")
    min_lr_ratio: float = setting(0.1, "cosine decay ends at lr * this (Hoffmann et al. 2022)")
    warmup_steps: int = setting(1000, "linear warmup from 0 (T5: 10k steps of constant 1e-2, then inverse-sqrt decay)")
    weight_decay: float = setting(0.0, "decoupled weight decay (T5 and nanoT5 use none), on matrices only, not norms or "
                                  "position biases")
    beta1: float = setting(0.9, "Adam's first-moment decay")
    beta2: float = setting(0.999, "Adam's second-moment decay (nanoT5)")
    eps: float = setting(1e-8, "Adam's epsilon")
    grad_clip: float = setting(1.0, "global gradient-norm clip")
    seed: int = setting(0, "random seed: model init, window order, noise masks")
    log_every: int = setting(50, "steps per train_log.jsonl record")
    eval_every: int = setting(2000, "steps between validation passes (and always at the end)")
    eval_batches: int = setting(10, "validation batches per pass")
    checkpoint_every: int = setting(1000, "steps between checkpoints (and always at the end)")
    snapshot_every: int | None = setting(None, "also keep the model every N steps in OUT-snapshots/step-N (the study "
                                         "`objective --lm-steps OUT` prompt-tunes each); none by default")
    max_minutes: float | None = setting(None, "wall-clock limit for this call: stop cleanly, checkpoint, resume later")
    device: str = setting("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ...")
    precision: Precision = setting("auto", "autocast precision of the forward pass, fp32, bf16 or fp16 (weights stay "
                                   "fp32); auto: bf16 on CUDA, fp32 elsewhere")
    compile: bool = setting(False, "torch.compile the training forward")
    prefetch: int = setting(4, "batches built ahead in a background thread (0: none)")
    progress: bool = setting(True, "tqdm progress bar", cli=False)

    def __post_init__(self) -> None:
        prefix = "PretrainConfig."
        check_fields(self, prefix=prefix)
        at_least(self, 1, "steps", "batch_size", "inputs_length", "targets_length", "log_every", "eval_every",
                 "eval_batches", "checkpoint_every", prefix=prefix)
        at_least(self, 0, "warmup_steps", "prefetch", prefix=prefix)
        at_least(self, 1, "snapshot_every", prefix=prefix)
        if not 0 < self.noise_density < 0.5:
            raise SoftpromptError(f"{prefix}noise_density={self.noise_density} must be in (0, 0.5)")
        for name in ("lr", "max_minutes", "grad_clip"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SoftpromptError(f"{prefix}{name}={value} must be positive")
