"""Every setting, as dataclasses whose defaults are the paper's values (Lester et al., 2021)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

INITS = ("random-uniform", "sampled-vocab", "class-label", "text", "file")
EVAL_METHODS = ("rank", "generate", "both")
TARGET_FORMATS = ("plain", "sentinel")
TUNE_MODES = ("prompt", "model")


@dataclass
class PromptConfig:
    """Shape and initialisation of one soft prompt."""

    length: int = 100  # paper default p = 100 (§3.2)
    init: str = "class-label"  # the paper's best initialisation (§3.2, Fig. 3b)
    init_range: float = 0.5  # random-uniform draws from [-0.5, 0.5] (paper text)
    vocab_sample_size: int = 5000  # sampled-vocab: the 5,000 most common tokens (§3.2)
    init_text: str | None = None  # for init="text"
    init_file: str | None = None  # for init="file": a saved prompt directory


@dataclass
class TrainConfig:
    """One prompt-tuning run: the paper's recipe (§3, Appendix A) unless overridden."""

    task: str = "sst2"
    model: str | None = None  # hub name or local path; None = the packaged default backbone
    output: str = "runs/prompt"
    data_dir: str | None = None  # None = $SOFTPROMPT_DATA_DIR, else the Hugging Face hub
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_steps: int = 30_000  # paper: 30,000 steps
    max_minutes: float | None = None  # wall-clock limit; the run ends cleanly with its best prompt
    batch_size: int = 32  # paper: batch 32
    group_by_length: bool = True  # batches of similar length (less padding, faster); False: random batches
    lr: float = 0.3  # paper: constant learning rate 0.3, Adafactor
    weight_decay: float = 1e-5  # paper: weight decay 1e-5
    beta2_decay: float = 0.8  # paper: Adafactor beta2 decay 0.8 (parameter scaling off)
    max_input_length: int = 512  # T5's input length
    max_target_length: int = 16  # reference code: short targets (4-8 tokens); longer for QA
    train_examples: int | None = None  # None = the whole train split; else its first N (few-shot)
    eval_every: int = 1000
    eval_examples: int | None = None  # None = the whole dev split
    eval_method: str = "rank"  # model selection by rank classification where the task allows
    eval_batch_size: int = 64
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    target_format: str = "plain"  # "sentinel" = <extra_id_0> before every target (§3.3)
    device: str = "auto"
    compile: bool = False  # torch.compile the backbone: faster steps after a minute or two of compiling
    ema_decay: float | None = None  # not in the paper: evaluate and keep a moving average of the trained weights (e.g. 0.99)
    task_spec: dict[str, Any] | None = None  # a custom task's CustomTaskSpec fields
    tune: str = "prompt"  # "prompt" (the method) or "model": the model-tuning baseline, every weight trains

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["prompt"] = PromptConfig(**values.get("prompt", {}))
        return cls(**values)
