"""The settings of a whole backbone build, and the per-stage settings of the `softprompt pretrain` command.

`BackboneConfig` holds one config per stage. The command line takes the settings both training
stages share from `PretrainConfig`'s fields, and those that differ per stage from `PretrainStages`,
whose defaults are read from `BackboneConfig()`: with no flags, the command builds exactly the
library's two stage configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..config import at_least, check_fields, setting
from .config import PretrainConfig
from .corpus import CorpusConfig
from .tokenizer import TokenizerConfig


def _lm_adapt_default() -> PretrainConfig:
    # Lester et al. 2021: LM adaptation for up to 100K extra steps, ~10% of T5's pretraining. A fresh
    # optimizer on a trained model: half the peak rate, short warmup.
    return PretrainConfig(objective="lm-adapt", steps=2000, warmup_steps=100, lr=1e-2, eval_every=500,
                          checkpoint_every=500, targets_length=256)


@dataclass
class BackboneConfig:
    """All settings of `build_backbone`, one dataclass per stage."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    span_corruption: PretrainConfig = field(default_factory=PretrainConfig)
    lm_adapt: PretrainConfig = field(default_factory=_lm_adapt_default)


# PretrainConfig's fields that PretrainStages sets per stage (the objective is the stage's own).
STAGE_FIELDS = ("objective", "steps", "lr", "warmup_steps", "eval_every", "checkpoint_every", "targets_length")
# Flags that set span corruption's value and, unless the LM-adaptation flag is given, LM adaptation's.
_BOTH = ("warmup_steps", "eval_every", "checkpoint_every")
_SPAN, _LM = BackboneConfig().span_corruption, BackboneConfig().lm_adapt


@dataclass
class PretrainStages:
    """The settings the command line sets per stage; defaults are `BackboneConfig()`'s two stages.

    Given on their own, --warmup-steps, --eval-every and --checkpoint-every apply to LM adaptation
    too (its warmup capped at a tenth of its steps), and --inputs-length sets its target length:
    `from_flags` applies these rules. Not given, each stage keeps its library default.
    """

    span_steps: int = setting(_SPAN.steps, "span-corruption steps")
    lm_steps: int = setting(_LM.steps, "LM-adaptation steps")
    lr: float = setting(_SPAN.lr, "span-corruption peak rate")
    lm_lr: float = setting(_LM.lr, "LM-adaptation peak rate (a fresh optimizer on a trained model: lower)")
    warmup_steps: int = setting(_SPAN.warmup_steps, "span-corruption warmup steps; given alone, LM adaptation's too "
                                "(at most a tenth of its steps)")
    lm_warmup_steps: int = setting(_LM.warmup_steps, "LM-adaptation warmup steps")
    eval_every: int = setting(_SPAN.eval_every, "span-corruption steps between validation passes; given alone, "
                              "LM adaptation's too")
    lm_eval_every: int = setting(_LM.eval_every, "LM-adaptation steps between validation passes")
    checkpoint_every: int = setting(_SPAN.checkpoint_every, "span-corruption steps between checkpoints; given alone, "
                                    "LM adaptation's too")
    lm_checkpoint_every: int = setting(_LM.checkpoint_every, "LM-adaptation steps between checkpoints")
    lm_targets_length: int = setting(_LM.targets_length, "LM-adaptation target tokens incl. </s> "
                                     "(follows --inputs-length when that alone is given)")

    def __post_init__(self) -> None:
        check_fields(self, prefix="PretrainStages.")
        at_least(self, 1, "span_steps", "lm_steps", "eval_every", "lm_eval_every", "checkpoint_every",
                 "lm_checkpoint_every", "lm_targets_length", prefix="PretrainStages.")
        at_least(self, 0, "warmup_steps", "lm_warmup_steps", prefix="PretrainStages.")

    @classmethod
    def from_flags(cls, flags: dict[str, Any], shared: dict[str, Any]) -> PretrainStages:
        """The stages from the flags given: `flags` of these fields, `shared` of PretrainConfig's (the rules above)."""
        values = dict(flags)
        for name in _BOTH:
            if name in flags and f"lm_{name}" not in flags:
                values[f"lm_{name}"] = flags[name]
        if "warmup_steps" in flags and "lm_warmup_steps" not in flags:
            values["lm_warmup_steps"] = min(flags["warmup_steps"], max(1, values.get("lm_steps", _LM.steps) // 10))
        if "inputs_length" in shared and "lm_targets_length" not in flags:
            values["lm_targets_length"] = shared["inputs_length"]
        return cls(**values)

    def configs(self, shared: dict[str, Any] | None = None) -> tuple[PretrainConfig, PretrainConfig]:
        """(span corruption, LM adaptation): `BackboneConfig()`'s stages with `shared` and these settings laid over."""
        shared = shared or {}
        clash = sorted(set(shared) & set(STAGE_FIELDS))
        if clash:
            raise ValueError(f"PretrainStages sets {', '.join(clash)} per stage")
        base = BackboneConfig()
        span = replace(base.span_corruption, **shared, steps=self.span_steps, lr=self.lr, warmup_steps=self.warmup_steps,
                       eval_every=self.eval_every, checkpoint_every=self.checkpoint_every)
        lm = replace(base.lm_adapt, **shared, steps=self.lm_steps, lr=self.lm_lr, warmup_steps=self.lm_warmup_steps,
                     eval_every=self.lm_eval_every, checkpoint_every=self.lm_checkpoint_every,
                     targets_length=self.lm_targets_length)
        return span, lm
