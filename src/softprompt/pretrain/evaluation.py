"""Validation during pretraining: loss, perplexity, and whether the decoder uses its encoder."""

from __future__ import annotations

import math

import torch

from ..device import autocast, to_device
from .objectives import Batch


def _mean_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device, precision: str,
               shuffle_encoder: bool) -> float:
    total, count = 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        if shuffle_encoder:  # pair every target with another row's input
            batch = {**batch, "input_ids": batch["input_ids"].roll(1, 0), "attention_mask": batch["attention_mask"].roll(1, 0)}
        with autocast(precision, device):
            loss = model(**batch).loss
        n = int((batch["labels"] != -100).sum())
        total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], device: torch.device, precision: str) -> dict[str, float]:
    """Validation loss and perplexity, and the encoder-dependence check, under autocast `precision`.

    `encoder_gap` = loss with encoder inputs shuffled across the batch - loss with the true inputs.
    A decoder that ignores its encoder has a gap near 0, and such a backbone is useless for prompt tuning.
    """
    was_training = model.training
    model.eval()
    val = _mean_loss(model, batches, device, precision, shuffle_encoder=False)
    shuffled = (_mean_loss(model, batches, device, precision, shuffle_encoder=True)
                if batches[0]["input_ids"].shape[0] > 1 else float("nan"))
    model.train(was_training)
    return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0)), "val_loss_shuffled_encoder": shuffled,
            "encoder_gap": shuffled - val}
