"""The one trainer: step, micro-batches, gradient reduction, stop, checkpoint and random state, on one process or many.

A loop (prompt tuning, model tuning, pretraining, a PEFT baseline) supplies what only it knows
(`Objective`): the summed loss of some examples and their target-token count, what to do after a
step, an evaluation, and its own state to checkpoint. The trainer does the rest, the same way for
every loop:

- every rank draws the same global batch from the stream and keeps its share (`distributed.shard`);
  a rank left with nothing (a last batch smaller than the world) computes one example at weight 0,
  so it still joins the reduction;
- its share is split into micro-batches of `micro_batch_size`; each one's summed NLL is divided
  by the *global* count of target tokens, which every rank can count from the global batch, so
  any split (ranks x micro-batches) takes the single-process step, up to float rounding;
- gradients are summed over ranks once per step: the prompt bank's in one flat all-reduce, a
  module under `DistributedDataParallel` (model tuning) by DDP itself (its mean is scaled back to
  a sum), synchronising only on the last micro-batch;
- the stop (steps, wall clock) is decided by all ranks together, so none waits for a peer that left;
- only rank 0 writes (`RunDir(writer=...)`); every rank's random state goes into the checkpoint,
  and a resume restores each rank's own, at the same world size only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel

from . import distributed as dist
from .errors import SoftpromptError
from .run import RunDir, Stopper, random_states, restore_random_states, seed_everything

RANK_SEED_STRIDE = 1_000_003  # rank r > 0 seeds its generators with seed + r * stride; rank 0 keeps the run's seed


class Stream(Protocol):
    def next(self) -> list: ...
    def position(self) -> tuple[int, ...]: ...
    def seek(self, *position: int) -> None: ...


class Objective(Protocol):
    """What a loop supplies to the trainer."""

    def nll(self, items: Sequence[Any]) -> torch.Tensor:
        """The summed loss (NLL over target tokens) of `items`, a scalar that backpropagates."""

    def tokens(self, items: Sequence[Any]) -> int:
        """How many target tokens `items` hold: the loss of a step is its summed NLL over this count for the global batch."""

    def after_step(self, step: int) -> None:
        """Called on every rank after each optimizer step (a moving average, say)."""

    def evaluate(self, step: int) -> None:
        """Called on every rank every `eval_every` steps; ranks must take the same decisions (gather, do not guess)."""

    def state_dict(self) -> dict[str, Any]:
        """The loop's own part of a checkpoint (best so far, an average ...)."""

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank random streams (dropout differs across ranks); rank 0 keeps the single-process stream."""
    if rank:
        seed_everything(seed + rank * RANK_SEED_STRIDE)


def saved_random_states(world: dist.World) -> dict[str, Any]:
    """Every rank's generators for a checkpoint (a collective: all ranks call it), with the world size they belong to."""
    states = dist.gather(random_states())
    return {"random": states[0], "world_size": world.size, **({"random_ranks": states} if world.distributed else {})}


def restore_rank_random_states(saved: dict[str, Any], world: dist.World) -> None:
    """This rank's generators from what `saved_random_states` kept (a one-process checkpoint keeps one set)."""
    ranks = saved.get("random_ranks")
    restore_random_states(ranks[world.rank] if ranks else saved["random"])


def check_world_size(saved: dict[str, Any], world: dist.World, where: object) -> None:
    """Refuse, in one line, a checkpoint saved by another number of processes: ranks and random states would not match."""
    world_size = saved.get("world_size", 1)
    if world_size != world.size:
        raise SoftpromptError(f"{where}: saved by {world_size} process(es), resumed with {world.size}; "
                              "resume with the same number of processes")


class Trainer:
    """Runs the optimizer steps of one run.

    `run` and `stream` may be None for a loop that hands each batch to `step` and checkpoints itself:
    pretraining, whose batches are a function of the step and whose checkpoint (a `RunDir` too, its
    whole folder) also holds the model, the schedule and the loss scaler. Then only `step` is used.
    """

    def __init__(self, run: RunDir | None, world: dist.World, stream: Stream | None, optimizer: torch.optim.Optimizer,
                 params: list[torch.nn.Parameter], *, micro_batch_size: int | None = None,
                 grad_clip: float | None = None, device: torch.device | str = "cpu", scaler: torch.amp.GradScaler | None = None):
        self.run, self.world, self.stream = run, world, stream
        self.optimizer, self.params = optimizer, params
        self.micro_batch_size, self.grad_clip, self.device, self.scaler = micro_batch_size, grad_clip, device, scaler
        self.ddp_module: DistributedDataParallel | None = None
        self.step_count = 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` under DistributedDataParallel on several ranks (model tuning, pretraining); itself on one.

        Only for modules whose weights train: a frozen backbone with a prompt bank reduces the bank
        by hand instead (`dist.sum_gradients`), one small all-reduce per step.
        """
        if not self.world.distributed:
            return module
        device = torch.device(self.device)
        self.ddp_module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        return self.ddp_module

    # ---- starting and saving ----------------------------------------------------------------------
    def start(self, objective: Objective) -> dict[str, Any] | None:
        """Write the run folder (rank 0), then restore its checkpoint on every rank; returns it (None for a new run)."""
        saved = self.run.start(check=self.check_world)
        dist.barrier()  # no rank steps before rank 0 has written run.json and trimmed the log
        if saved is None:
            return None
        self.step_count = saved["step"]
        self.optimizer.load_state_dict(saved["optimizer"])
        self.stream.seek(*saved["position"])
        restore_rank_random_states(saved, self.world)
        objective.load_state(saved)
        return saved

    def check_world(self, saved: dict[str, Any]) -> None:
        """Refuse, before anything is written, a checkpoint saved by another number of processes."""
        check_world_size(saved, self.world, self.run.checkpoint_path)

    def save(self, objective: Objective) -> None:
        """A checkpoint: every rank's random state is gathered (a collective: all ranks call this), rank 0 writes."""
        self.run.save_checkpoint({
            "optimizer": self.optimizer.state_dict(), **objective.state_dict(), "step": self.step_count,
            "position": self.stream.position(), **saved_random_states(self.world),
        })

    # ---- one step ---------------------------------------------------------------------------------
    def step(self, objective: Objective, items: Sequence[Any] | None = None) -> torch.Tensor:
        """One optimizer step on `items` (default: the stream's next global batch); returns its loss, the same on every rank.

        The loss stays a tensor on the device, so a loop that logs every N steps does not wait for the device each step.
        """
        items = self.stream.next() if items is None else items
        total = max(objective.tokens(items), 1)
        mine, weight = dist.shard(items, self.world), 1.0
        if not mine:  # fewer examples than ranks: compute one, count none, so the reduction still meets
            mine, weight = items[:1], 0.0
        size = self.micro_batch_size or len(mine)
        chunks = [mine[i : i + size] for i in range(0, len(mine), size)]
        # DDP averages gradients over ranks; the loss here is a sum over the global batch, so scale its mean back
        scale = self.world.size if self.ddp_module is not None else 1
        nll_sum = torch.zeros((), device=self.device)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            with self.ddp_module.no_sync() if self.ddp_module is not None and not last else nullcontext():
                nll = objective.nll(chunk)
                loss = nll * weight * scale / total
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            nll_sum += nll.detach() * weight
        if self.ddp_module is None:
            dist.sum_gradients(self.params)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # fp16: clip and step on the true gradients
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        objective.after_step(self.step_count)
        return dist.all_sum(nll_sum) / total

    # ---- the run ----------------------------------------------------------------------------------
    def fit(self, objective: Objective, stopper: Stopper, log_every: int, eval_every: int, checkpoint_every: int,
            postfix: Any = None) -> None:
        """Steps until the ranks agree to stop; logs, evaluates and checkpoints on their schedules."""
        while not dist.any_rank(stopper.should_stop(self.step_count), self.device):
            loss = float(self.step(objective))
            step = self.step_count
            if step % log_every == 0:
                self.run.log({"step": step, "loss": round(loss, 5), "seconds": round(stopper.elapsed(), 2)})
                stopper.advance(step, loss=f"{loss:.3f}", **(postfix() if postfix else {}))
            else:
                stopper.advance(step)
            if step % eval_every == 0:
                objective.evaluate(step)
            if step % checkpoint_every == 0:
                self.save(objective)

