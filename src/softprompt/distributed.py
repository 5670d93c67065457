"""The process group a run is part of: who this process is, where it computes, and the few collectives training needs.

A launcher (`torchrun`, `accelerate launch`, or Slurm's `srun`) starts one process per device and
tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT; under Slurm SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). Without them the run is one
process and every collective here is the identity, so single-process code pays nothing.

Collectives go through PyTorch's own engine: gloo on the CPU, NCCL on CUDA. Each has a timeout
(`SOFTPROMPT_DIST_TIMEOUT_S`, default 600 s), so a rank that died ends its peers with a message
rather than a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import SoftpromptError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class World:
    """This process's place: rank among `size` processes, and `local_rank` on its node (its device index)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Only rank 0 writes files: one log, one checkpoint, one prompt."""
        return self.rank == 0


SINGLE = World()


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise SoftpromptError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def world_from_env() -> World:
    """The world the launcher described, or one process when it described none."""
    size = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    if size is None or size <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK", "SLURM_PROCID"), _env_int("LOCAL_RANK", "SLURM_LOCALID")
    if rank is None:
        raise SoftpromptError(f"WORLD_SIZE={size} but neither RANK nor SLURM_PROCID is set; launch with torchrun or srun")
    if not 0 <= rank < size:
        raise SoftpromptError(f"RANK={rank} lies outside WORLD_SIZE={size}")
    return World(rank, size, local_rank if local_rank is not None else 0)


def join(device_name: str = "auto") -> tuple[World, str]:
    """Join the process group the environment describes; returns the world and this rank's device name.

    `device_name` "auto" means cuda:LOCAL_RANK where CUDA is available, else the CPU; an explicit
    device is taken as given on a single process and refused for several (every rank would share it).
    Raises SoftpromptError for an environment that does not describe a world.
    """
    world = world_from_env()
    if not world.distributed:
        return world, device_name
    if dist.is_initialized():
        return world, _rank_device(device_name, world)
    device = _rank_device(device_name, world)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    os.environ.setdefault("RANK", str(world.rank))  # Slurm: torch reads the env:// rendezvous from these
    os.environ.setdefault("WORLD_SIZE", str(world.size))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise SoftpromptError(f"WORLD_SIZE={world.size} but {name} is not set; launch with torchrun, or set it for srun")
    timeout = timedelta(seconds=_env_int("SOFTPROMPT_DIST_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    if backend == "nccl":
        torch.cuda.set_device(int(device.partition(":")[2] or 0))
    dist.init_process_group(backend, timeout=timeout, rank=world.rank, world_size=world.size)
    return world, device


def _rank_device(name: str, world: World) -> str:
    if name == "auto":
        return f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and world.distributed:
        raise SoftpromptError(f"device={name!r} with {world.size} processes would put every rank on one GPU; "
                              "use --device auto (each rank takes cuda:LOCAL_RANK)")
    return name


PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "NCCL error", "Broken pipe")


def is_peer_failure(err: BaseException) -> bool:
    """A collective that failed because another rank died or stalled (not a bug of this rank's own computation)."""
    return isinstance(err, dist.DistError) or any(sign in str(err) for sign in PEER_SIGNS)


def peer_failure(err: BaseException) -> str:
    """One line for a collective that failed: which rank saw it, and the backend's first line."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    rank = dist.get_rank() if dist.is_initialized() else "?"
    return f"rank {rank}: a collective failed, so a peer process died or timed out ({first[:300]})"


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- collectives (identities on one process) ---------------------------------------------------------
def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place; returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of `params` over ranks in one flat reduction (a prompt bank is a few hundred KB)."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (total elements,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when any rank says so: one agreed decision (to stop, say) instead of one per clock."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(item: T) -> list[T]:
    """Every rank's `item`, in rank order, on every rank."""
    if not active():
        return [item]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, item)
    return out


def broadcast(item: T) -> T:
    """Rank 0's `item` on every rank."""
    if not active():
        return item
    box = [item]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shard(items: list[T], world: World) -> list[T]:
    """This rank's share of a list: every `size`-th item from its rank (balanced when items are sorted by length)."""
    return items[world.rank :: world.size]


def unshard(parts: list[list[T]]) -> list[T]:
    """The inverse of `shard`: the ranks' shares (rank order) interleaved back into the original order."""
    total = sum(len(p) for p in parts)
    out: list[Any] = [None] * total
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out

