"""Every setting, as typed dataclasses whose defaults are the paper's values (Lester et al., 2021).

Each field carries one line of help (`setting(default, help)`); the command line is generated
from these fields (`configargs.py`), so help is written once and CLI defaults are the library's.
`__post_init__` refuses impossible values with a message naming the field, before anything is
loaded or written.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import SoftpromptError

Init = Literal["random-uniform", "sampled-vocab", "class-label", "text", "file"]
EvalMethod = Literal["rank", "generate", "both"]
TargetFormat = Literal["plain", "sentinel"]
Tune = Literal["prompt", "model"]
DType = Literal["fp32", "bf16", "fp16"]
Precision = Literal["fp32", "bf16", "fp16"]
Recipe = Literal["scaled", "paper"]

INITS, EVAL_METHODS, TARGET_FORMATS, TUNE_MODES, DTYPES = (get_args(t) for t in (Init, EvalMethod, TargetFormat, Tune, DType))


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING, **extra: Any) -> Any:
    """A dataclass field with its help line (and e.g. `flag=` for a command-line name, `path=True`)."""
    metadata = {"help": help, **extra}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_fields(config: Any, prefix: str = "") -> None:
    """Refuse a value outside a Literal's choices or of the wrong basic type; names the field."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        options = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (typing.Union, _UnionType) else [hint]
        if value is None and len(options) < _arity(hint):
            continue
        if not any(_matches(value, option) for option in options):
            wanted = " or ".join(_describe(o) for o in options)
            raise SoftpromptError(f"{prefix}{f.name}={value!r} is not {wanted}")


_UnionType = type(int | None)


def _arity(hint: Any) -> int:
    return len(get_args(hint)) if get_origin(hint) in (typing.Union, _UnionType) else 1


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def at_least(config: Any, minimum: float, *names: str, prefix: str = "") -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise SoftpromptError(f"{prefix}{name}={value} must be at least {minimum}")


@dataclass
class PromptConfig:
    """Shape and initialisation of one soft prompt."""

    length: int = setting(100, "prompt length p (paper default 100, §3.2)", flag="prompt-length")
    init: Init = setting("class-label", "prompt initialisation; class-label is the paper's best (§3.2, Fig. 3b)")
    init_range: float = setting(0.5, "random-uniform draws from [-r, r] (paper: 0.5)")
    vocab_sample_size: int = setting(5000, "sampled-vocab draws from this many most common tokens (§3.2)")
    init_text: str | None = setting(None, "init text: embed this string's first p tokens")
    init_file: str | None = setting(None, "init file: a saved prompt directory of the same shape", path=True)

    def __post_init__(self) -> None:
        check_fields(self)
        at_least(self, 0, "length")
        at_least(self, 1, "vocab_sample_size")
        if self.init_range <= 0:
            raise SoftpromptError(f"init_range={self.init_range} must be positive")
        if self.init == "text" and not self.init_text:
            raise SoftpromptError("init='text' needs init_text (--init-text)")
        if self.init == "file" and not self.init_file:
            raise SoftpromptError("init='file' needs init_file (--init-file), a saved prompt directory")


@dataclass
class TrainConfig:
    """One prompt-tuning run: the paper's recipe (§3, Appendix A) unless overridden."""

    task: str = setting("sst2", "task name (sst2, mrpc, qqp, boolq, cb, copa, multirc, rte, wic, wsc, record, squad, mrqa-*) or 'custom'")
    model: str | None = setting(None, "backbone: hub name, local folder, .gguf file or packaged:NAME (default: packaged:smollm2-135m)")
    output: str = setting("runs/prompt", "run directory", path=True)
    data_dir: str | None = setting(None, "GLUE/SuperGLUE file layout; default $SOFTPROMPT_DATA_DIR, else the Hugging Face hub", path=True)
    prompt: PromptConfig = setting(help="the prompt's shape and initialisation", factory=PromptConfig)
    max_steps: int = setting(30_000, "optimizer steps (paper: 30,000)")
    max_minutes: float | None = setting(None, "stop cleanly after this much wall-clock time, keeping the best prompt")
    batch_size: int = setting(32, "examples per step (paper: 32)")
    group_by_length: bool = setting(True, "batches of similar input length, for less padding; off: random batches")
    recipe: Recipe = setting("scaled", "scaled: lr times the backbone's embedding RMS over T5's (optim.py); paper: lr as given")
    lr: float = setting(0.3, "Adafactor learning rate on T5's embedding scale (paper: constant 0.3)")
    weight_decay: float = setting(1e-5, "Adafactor weight decay (paper: 1e-5)")
    beta2_decay: float = setting(0.8, "Adafactor second-moment decay exponent (paper: 0.8)")
    parameter_scaling: bool = setting(False, "Adafactor steps in proportion to each weight's RMS: T5 fine-tuning's default, "
                                      "the paper's model-tuning baseline (prompt tuning: off, paper section 3)")
    max_input_length: int = setting(512, "input tokens kept per example (T5: 512)")
    max_target_length: int = setting(16, "target tokens kept per example (short labels; longer for QA)")
    train_examples: int | None = setting(None, "train on the first N training examples only (default: all)")
    eval_every: int = setting(1000, "steps between dev evaluations")
    eval_examples: int | None = setting(None, "evaluate on the first N dev examples only (default: all)")
    select_examples: int | None = setting(None, "choose the best step on N examples held out of the training split (a fixed "
                                          "sample), then score the full dev set at that step and the last; default: "
                                          "choose on the dev set itself (the paper's early stopping)")
    eval_method: EvalMethod = setting("rank", "model selection by rank classification or generation")
    eval_batch_size: int = setting(64, "examples per evaluation batch")
    checkpoint_every: int = setting(100, "steps between checkpoints")
    log_every: int = setting(10, "steps between loss records in metrics.jsonl")
    seed: int = setting(0, "random seed (prompt init, batch order, dropout)")
    target_format: TargetFormat = setting("plain", "'sentinel' puts <extra_id_0> before every target (§3.3)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    dtype: DType = setting("fp32", "storage dtype of the frozen backbone; the prompt's master copy stays fp32")
    precision: Precision = setting("fp32", "autocast precision of the forward pass (bf16 or fp16; TF32 is on for CUDA)")
    compile: bool = setting(False, "torch.compile the backbone: faster steps after a minute or two of compiling")
    micro_batch_size: int | None = setting(None, "split each process's share of a batch into micro-batches of this many "
                                           "examples (gradient accumulation): the same step in less memory")
    gradient_checkpointing: bool = setting(False, "recompute the frozen backbone's activations in the backward pass: "
                                           "less memory, about a third more time")
    shard_backbone: bool = setting(False, "several processes: shard the frozen backbone's blocks over them (FSDP2), for "
                                   "backbones larger than one device; prompt tuning with rank classification")
    deterministic: bool = setting(False, "deterministic algorithms and one intra-op thread, so two runs (and a killed "
                                  "and resumed run) end bit-identical; slower")
    ema_decay: float | None = setting(None, "not in the paper: evaluate and keep a moving average of the trained weights, e.g. 0.99")
    task_spec: dict[str, Any] | None = setting(None, "a custom task's spec (CustomTaskSpec.to_dict())", cli=False)
    tune: Tune = setting("prompt", "prompt: prompt tuning; model: the model-tuning baseline, every weight trains")

    def __post_init__(self) -> None:
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        check_fields(self)
        at_least(self, 0, "max_steps")
        at_least(self, 1, "batch_size", "micro_batch_size", "eval_every", "eval_batch_size", "checkpoint_every", "log_every",
                 "train_examples", "eval_examples", "select_examples")
        at_least(self, 2, "max_input_length", "max_target_length")
        for name in ("lr", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SoftpromptError(f"{name}={value} must be positive")
        if self.weight_decay < 0:
            raise SoftpromptError(f"weight_decay={self.weight_decay} must not be negative")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise SoftpromptError(f"ema_decay={self.ema_decay} (--ema-decay) must lie between 0 and 1")
        if self.tune == "prompt" and self.prompt.length < 1:
            raise SoftpromptError(f"prompt length {self.prompt.length} (--prompt-length): prompt tuning needs at least 1")
        if self.task == "custom" and self.task_spec is None:
            raise SoftpromptError("task 'custom' needs --train-file, --input-template and --target-field")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """A config from `run.json`'s content; raises SoftpromptError naming an unknown field."""
        return from_dict(cls, data, source)


Split = Literal["train", "validation", "test"]
PredictMethod = Literal["generate", "rank"]


@dataclass
class LoadConfig:
    """Which saved prompts to load, onto which backbone, where, in which precision."""

    prompt: tuple[str, ...] = setting((), "prompt directory; repeat for several, optionally NAME=DIR", repeat=True)
    model: str | None = setting(None, "backbone (default: the one recorded in the first prompt file)")
    allow_other_backbone: bool = setting(False, "load a prompt trained on another backbone of the same kind and width")
    batch_size: int = setting(64, "examples per batch")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    dtype: DType = setting("fp32", "storage dtype of the frozen backbone")

    def __post_init__(self) -> None:
        self.prompt = tuple(self.prompt)
        check_fields(self)
        if not self.prompt:
            raise SoftpromptError("give at least one --prompt")
        at_least(self, 1, "batch_size")


@dataclass
class EvalConfig(LoadConfig):
    """Scoring saved prompts on a task split; each prompt is reported under its name."""

    task: str | None = setting(None, "task to score on (default: each prompt's own task); 'custom' with the custom-task flags")
    data_dir: str | None = setting(None, "GLUE/SuperGLUE file layout; default $SOFTPROMPT_DATA_DIR, else the Hugging Face hub", path=True)
    split: Split = setting("validation", "split to score (test splits have no labels: use predict)")
    method: EvalMethod = setting("both", "rank classification, generation, or both")
    examples: int | None = setting(None, "only the first N examples")
    label_map: str | None = setting(None, "zero-shot transfer: TASK_LABEL=PROMPT_LABEL,... (MRPC<->QQP, RTE->CB built in)")
    task_spec: dict[str, Any] | None = setting(None, "a custom task's spec", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "examples")


@dataclass
class PredictConfig(LoadConfig):
    """Running prompts on inputs; each input names its prompt, so tasks mix in one batch."""

    input: tuple[str, ...] = setting((), "an input text for the first prompt; repeatable", repeat=True)
    input_file: str | None = setting(None, 'JSONL of {"input": TEXT, "prompt": NAME}', path=True)
    method: PredictMethod = setting("generate", "greedy generation, or rank classification over the prompt's labels")
    max_new_tokens: int = setting(16, "generation budget")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.input = tuple(self.input)
        at_least(self, 1, "max_new_tokens")
        if not self.input and not self.input_file:
            raise SoftpromptError("give --input TEXT or --input-file FILE")



def from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    """Build dataclass `cls` (nested dataclasses included) from plain JSON data."""
    if not isinstance(data, dict):
        raise SoftpromptError(f"{source}: expected a JSON object, found {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SoftpromptError(f"{source}: unknown field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            value = from_dict(hints[name], value, f"{source}: {name}")
        values[name] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise SoftpromptError(f"{source}: {err}") from None


def normalised(config: Any) -> dict[str, Any]:
    """A config as plain data in one canonical form, so that equal runs compare equal.

    Paths (fields marked `path=True`, and a custom task's files) are resolved to absolute paths;
    tuples become lists. Used to decide whether a saved run and a new config are the same run.
    """
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = normalised(value)
        elif f.metadata.get("path") and value is not None:
            value = str(Path(os.path.expanduser(value)).resolve())
        elif isinstance(value, dict):
            value = _plain(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
