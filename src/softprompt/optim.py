"""What trains and how: the parameters a run updates, Adafactor as the paper sets it, and a weight average.

The learning rate is scale-aware by default (`recipe="scaled"`). Adafactor without parameter
scaling moves every element by about `lr` per step (its update RMS is clipped to lr), whatever the
size of the vectors it moves. The paper's lr 0.3 was set for T5's embedding table; on a backbone
whose embeddings are 10x smaller (SmolLM2-135M: RMS 0.136) the same step throws the prompt far off
the vocabulary's scale. The scaled recipe keeps the step in proportion to the table:
`lr x RMS(embeddings) / T5_EMBEDDING_RMS`, which is the paper's 0.3 on the project's T5 backbone
and 0.027 on SmolLM2. `recipe="paper"` uses `lr` as given.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from transformers.optimization import Adafactor

from .backbones import Backbone
from .config import TrainConfig
from .model import PromptedModel

# The RMS of the project's T5 1.1-architecture backbone (packaged:t5-nano-lm-adapted), trained from
# T5's N(0, 1) embedding initialisation; T5 1.1's own checkpoints cannot be read offline.
# tests/test_optim.py checks it against the packaged table.
T5_EMBEDDING_RMS = 1.53


def embedding_rms(backbone: Backbone) -> float:
    return float(backbone.embeddings.detach().float().pow(2).mean().sqrt())


def learning_rate(config: TrainConfig, backbone: Backbone) -> float:
    """The Adafactor step size the run uses: scaled to the backbone's embeddings, or the paper's as given."""
    if config.recipe == "paper" or config.tune == "model":
        return config.lr
    return config.lr * embedding_rms(backbone) / T5_EMBEDDING_RMS


def trainable_parameters(model: PromptedModel, config: TrainConfig) -> list[torch.nn.Parameter]:
    """The prompts alone (prompt tuning), or the prompts and every backbone weight (model tuning)."""
    if config.tune == "model":
        model.base_model.requires_grad_(True)
        return list(model.parameters())
    return model.prompt_parameters()


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, lr: float | None = None) -> Adafactor:
    """Adafactor as the paper sets it: constant lr (`lr`, else config.lr), beta2 decay 0.8, no parameter scaling.

    `config.parameter_scaling` turns the scaling on: each tensor's step is lr x its RMS, as in Mesh
    TensorFlow's Adafactor, which T5's fine-tuning (the paper's model-tuning baseline, lr 1e-3) used.
    Without it every weight moves by about lr per step whatever its size; SmolLM2's weights (RMS
    ~0.02-0.14) then change by several percent a step at lr 1e-3.
    """
    return Adafactor(params, lr=config.lr if lr is None else lr, decay_rate=-config.beta2_decay, weight_decay=config.weight_decay,
                     scale_parameter=config.parameter_scaling, relative_step=False, warmup_init=False, beta1=None, clip_threshold=1.0)


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
