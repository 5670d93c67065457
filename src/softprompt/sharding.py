"""A frozen backbone larger than one device: its transformer blocks sharded over the ranks with FSDP2 (`fully_shard`).

Only the repeated blocks are sharded (the classes a Hugging Face model lists in `_no_split_modules`);
the input embedding, the output head and the final norm stay whole on every rank, so the prompt
splice, the fingerprint, the BOS row and the embedding statistics read the embedding as before.
Each block's weights are gathered for its forward (and again for the backward, which only needs
them to pass gradients through to the prompt: frozen weights get no gradient to reduce).

FSDP2, not FSDP1 (which needs one `requires_grad` per flattened group) nor DeepSpeed ZeRO-3 (which
breaks reading the embedding that a prompt is spliced into). Every rank must run the same forwards,
so a sharded backbone's evaluation runs all examples on every rank; what cannot yet run on shards
(generation, model tuning) is refused before anything is loaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from .distributed import World
from .errors import SoftpromptError


def check_shardable(tune: str, eval_method: str, has_candidates: bool) -> None:
    """Refuse, in one line, what a sharded backbone cannot run yet."""
    if tune == "model":
        raise SoftpromptError("shard_backbone (--shard-backbone) with tune='model': model tuning on a sharded backbone "
                              "(Adafactor on shards) is not built; shard a prompt-tuning run, or drop --shard-backbone")
    if eval_method != "rank" or not has_candidates:
        raise SoftpromptError("shard_backbone (--shard-backbone) needs rank classification (--eval-method rank, on a task with "
                              "labels): generation on a sharded backbone is not built")


def shard_blocks(model: nn.Module, world: World, device: torch.device) -> int:
    """Shard `model`'s transformer blocks over the ranks of `world`, in place; returns how many were sharded."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise SoftpromptError(f"shard_backbone: {type(model).__name__} names no transformer blocks (_no_split_modules), "
                              "so there is nothing to shard")
    if not world.distributed:
        return 0  # one process: every block is already whole here
    mesh = init_device_mesh(device.type, (world.size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    return len(blocks)
