"""AdamW whose step is scaled by each weight matrix's RMS, as Adafactor's relative step size.

T5's initialisation spans two orders of magnitude (embeddings std 1.0, attention queries std
(d_model * d_kv)**-0.5), and T5 was trained with Adafactor, whose updates are relative to each
parameter's scale. Plain AdamW moves every weight by about `lr` regardless: the embeddings barely
learn while the attention weights churn, and span corruption stalls near unigram loss with a
decoder that ignores the encoder. Scaling AdamW's update by max(1e-3, RMS(param)) restores
Adafactor's relative steps; this is nanoT5's `AdamWScale` (Nawrot 2023), which matched Adafactor
on T5 pretraining.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


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
