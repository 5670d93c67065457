"""Each prompt's per-layer keys/values kept between batches, in an LRU bounded by bytes.

A server answers request after request with the same few prompts; with the prompt first and
causal attention, a prompt's keys/values never change until its weight does, so they are computed
once and reused by every later batch that names the prompt. Entries are keyed by the weight tensor
itself (its identity and in-place version), so a prompt replaced under the same name, or updated
by an optimizer step, is recomputed rather than served stale.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values, each (1, h, p, d)


@dataclass
class _Entry:
    ref: weakref.ref
    version: int
    layers: Layers
    nbytes: int


def layers_nbytes(layers: Layers) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


class PrefixCache:
    """Least-recently-used prompt states within `budget_bytes`; hits, misses and evictions are counted.

    An entry larger than the whole budget is not kept (it is recomputed each time), so the budget
    is never exceeded. Not thread-safe: one thread (the server's batcher) runs the model.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, weight: torch.Tensor) -> Layers | None:
        key = id(weight)
        entry = self._entries.get(key)
        if entry is None or entry.ref() is not weight or entry.version != weight._version:
            if entry is not None:  # a dead or changed weight whose id was reused: drop it
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.layers

    def put(self, weight: torch.Tensor, layers: Layers) -> None:
        nbytes = layers_nbytes(layers)
        if id(weight) in self._entries:
            self._drop(id(weight))
        if nbytes > self.budget_bytes:
            return
        while self.nbytes + nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._entries[id(weight)] = _Entry(weakref.ref(weight), weight._version, layers, nbytes)
        self.nbytes += nbytes

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
