"""What trains and how: the parameters a run updates, Adafactor as the paper sets it, and a weight average."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from transformers.optimization import Adafactor

from .config import TrainConfig
from .model import PromptedModel


def trainable_parameters(model: PromptedModel, config: TrainConfig) -> list[torch.nn.Parameter]:
    """The prompts alone (prompt tuning), or the prompts and every backbone weight (model tuning)."""
    if config.tune == "model":
        model.backbone.requires_grad_(True)
        return list(model.parameters())
    return model.prompt_parameters()


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> Adafactor:
    """Adafactor as the paper sets it: constant lr, beta2 decay 0.8, no parameter scaling."""
    return Adafactor(params, lr=config.lr, decay_rate=-config.beta2_decay, weight_decay=config.weight_decay,
                     scale_parameter=False, relative_step=False, warmup_init=False, beta1=None, clip_threshold=1.0)


class WeightAverage:
    """An exponential moving average of the trained weights, swapped in to evaluate and save them.

    Not in the paper: at lr 0.3 each step moves the prompt far, so dev accuracy swings by several
    points from one evaluation to the next; the average is steadier.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.averages = [p.detach().clone() for p in params]  # starts at the initial weights
        self._update = get_ema_multi_avg_fn(decay)

    def update(self) -> None:
        self._update(self.averages, [p.detach() for p in self.params], None)

    @contextmanager
    def swapped_in(self):
        trained = [p.detach().clone() for p in self.params]
        self._copy_into_params(self.averages)
        try:
            yield
        finally:
            self._copy_into_params(trained)

    @torch.no_grad()
    def _copy_into_params(self, values: list[torch.Tensor]) -> None:
        for param, value in zip(self.params, values):
            param.copy_(value)
