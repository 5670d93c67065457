"""AdamW whose step is scaled by each weight matrix's RMS, as Adafactor's relative step size.

T5's initialisation spans two orders of magnitude (embeddings std 1.0, attention queries std
(d_model * d_kv)**-0.5), and T5 was trained with Adafactor, whose updates are relative to each
parameter's scale. Plain AdamW moves every weight by about `lr` regardless: the embeddings barely
learn while the attention weights churn, and span corruption stalls near unigram loss with a
decoder that ignores the encoder. Scaling AdamW's update by max(1e-3, RMS(param)) restores
Adafactor's relative steps; this is nanoT5's `AdamWScale` (Nawrot 2023), which matched Adafactor
on T5 pretraining.

The schedule: linear warmup, then cosine decay to `min_lr_ratio` of the peak at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import PretrainConfig


class AdamWScale(torch.optim.Optimizer):
    """Adam moments with bias correction, update * max(min_scale, RMS(param)), decoupled weight decay."""

    def __init__(self, params: Iterable, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, min_scale: float = 1e-3):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, min_scale=min_scale))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch's signature)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        for state in states:
            state["step"] += 1
        t = states[0]["step"]  # the parameters of a group always step together
        step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        # scale_i = max(min_scale, RMS(param_i)) * step_size, as 0-d tensors on the device (no host sync)
        scales = torch._foreach_mul(torch._foreach_norm(params), [step_size / math.sqrt(p.numel()) for p in params])
        torch._foreach_clamp_min_(scales, group["min_scale"] * step_size)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, denominators)  # m / (sqrt(v) + eps)
        torch._foreach_mul_(updates, scales)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_sub_(params, updates)


def make_optimizer(model: torch.nn.Module, config: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """`config.optimizer` over `model`'s parameters; weight decay on matrices only, not norms or position biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "relative_attention_bias" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw-scale":
        return AdamWScale(groups, lr=config.lr, betas=betas, eps=config.eps)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps, fused=device.type == "cuda")


def lr_factor(step: int, config: PretrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(optimizer: torch.optim.Optimizer, config: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
