"""Which corpus windows each training step reads: a pure function of (seed, step), so resuming is exact.

The token array is cut into non-overlapping windows; each epoch visits all of them in a seeded
random order, from a seeded offset (so window boundaries move between epochs). The objective's
randomness (noise masks, split points) is seeded by (seed, step) too. A background thread builds
the next batches while the accelerator works (numpy releases the GIL for the heavy parts).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..errors import SoftpromptError
from .objectives import Batch

Objective = Callable[[np.ndarray, np.random.Generator], Batch]


class WindowSampler:
    """Windows (batch_size, window_length) for any step, without state."""

    def __init__(self, tokens: np.ndarray, window_length: int, batch_size: int, seed: int):
        self.tokens, self.window_length, self.batch_size, self.seed = tokens, window_length, batch_size, seed
        self.windows_per_epoch = (len(tokens) - window_length) // window_length  # keeps room for the offset
        if self.windows_per_epoch < 1:
            raise SoftpromptError(
                f"corpus of {len(tokens)} tokens is too short for windows of {window_length} tokens"
            )
        self._epoch, self._order, self._offset = -1, np.zeros(0, np.int64), 0

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, int]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._order = rng.permutation(self.windows_per_epoch)
            self._offset = int(rng.integers(self.window_length))
            self._epoch = epoch
        return self._order, self._offset

    def windows(self, step: int) -> np.ndarray:
        """The (batch_size, window_length) corpus windows of `step` (0-based)."""
        first = step * self.batch_size
        rows = []
        for epoch in range(first // self.windows_per_epoch, (first + self.batch_size - 1) // self.windows_per_epoch + 1):
            order, offset = self._epoch_plan(epoch)
            lo = max(first, epoch * self.windows_per_epoch) - epoch * self.windows_per_epoch
            hi = min(first + self.batch_size, (epoch + 1) * self.windows_per_epoch) - epoch * self.windows_per_epoch
            rows.append(offset + order[lo:hi] * self.window_length)
        starts = np.concatenate(rows)  # (b,)
        return self.tokens[starts[:, None] + np.arange(self.window_length)[None, :]]  # (b, window)

    def epochs(self, steps: int) -> float:
        return steps * self.batch_size / self.windows_per_epoch


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, step])


def make_batch(sampler: WindowSampler, objective: Objective, step: int) -> Batch:
    return objective(sampler.windows(step), step_rng(sampler.seed, step))


def rows(batch: Batch) -> list[Batch]:
    """A batch as its rows, each (1, ...): what the trainer shards over ranks and micro-batches."""
    size = next(iter(batch.values())).shape[0]
    return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(size)]


def stack(items: list[Batch]) -> Batch:
    """Rows back into one batch, (n, ...) per key."""
    return {k: torch.cat([row[k] for row in items]) for k in items[0]}


def eval_batches(tokens: np.ndarray, objective: Objective, window_length: int, batch_size: int,
                 max_batches: int, seed: int = 1234) -> list[Batch]:
    """Fixed validation batches: consecutive windows of the held-out tokens, noise seeded once."""
    n = min(max_batches, len(tokens) // (window_length * batch_size))
    if n == 0 and len(tokens) >= window_length:  # a short validation slice still gives one smaller batch
        rows = len(tokens) // window_length
        return [objective(tokens[: rows * window_length].reshape(rows, window_length), step_rng(seed, 0))]
    return [
        objective(tokens[i * batch_size * window_length : (i + 1) * batch_size * window_length]
                  .reshape(batch_size, window_length), step_rng(seed, i))
        for i in range(n)
    ]


def prefetched(make: Callable[[int], Batch], start: int, stop: int, depth: int = 4) -> Iterator[tuple[int, Batch]]:
    """(step, batch) for steps start..stop-1, built `depth` ahead in a daemon thread; errors re-raised here."""
    if depth <= 0:
        yield from ((step, make(step)) for step in range(start, stop))
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop_flag = threading.Event()

    def work() -> None:
        try:
            for step in range(start, stop):
                if stop_flag.is_set():
                    return
                q.put((step, make(step)))
        except BaseException as e:  # handed to the consumer
            q.put((None, e))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        for _ in range(start, stop):
            step, item = q.get()
            if step is None:
                raise item
            yield step, item
    finally:
        stop_flag.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
