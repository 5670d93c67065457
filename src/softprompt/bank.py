"""The prompt bank: named prompt records (weight + metadata), added and removed at run time.

A forward gathers only the prompts its batch names, so the cost of a batch does not grow with
the number of prompts loaded. Prompts of different lengths live side by side; each example of a
mixed batch follows its own prompt's settings (labels, target format, lengths) from its record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import Prompts
from .errors import SoftpromptError
from .prompt_io import PromptMetadata

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def check_name(name: str) -> str:
    """Prompt names are file-name safe (they name folders and HTTP paths); raises SoftpromptError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SoftpromptError(f"prompt name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


_TAKEN = frozenset(dir(nn.ParameterDict()))  # names a ParameterDict already uses ("copy", "keys", "training" ...)


def _key(name: str) -> str:
    """The ParameterDict key of a prompt: module attribute names cannot hold dots, nor be the dict's own."""
    key = name.replace(".", "%2E")
    return "%" + key if key in _TAKEN else key  # '%' never starts a prompt name, so keys stay distinct


@dataclass
class PromptRecord:
    """One prompt: its trainable fp32 weight (p, e) and what it is for."""

    weight: nn.Parameter
    metadata: PromptMetadata

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.metadata.labels or ())


class PromptBank(nn.Module):
    """Prompt records keyed by name; `gather(names)` builds a batch's `Prompts`."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.weights = nn.ParameterDict()
        self._metadata: dict[str, PromptMetadata] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._metadata

    def __len__(self) -> int:
        return len(self._metadata)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    @property
    def names(self) -> list[str]:
        return list(self._metadata)

    def add(self, name: str, weight: torch.Tensor, metadata: PromptMetadata) -> PromptRecord:
        """Add (or replace) prompt `name`; the weight is kept as an fp32 master copy on its device."""
        check_name(name)
        if weight.ndim != 2 or weight.shape[1] != self.width:
            raise SoftpromptError(f"prompt {name!r} has shape {tuple(weight.shape)}, the backbone needs (p, {self.width})")
        self.weights[_key(name)] = nn.Parameter(weight.detach().clone().float())
        self._metadata[name] = metadata
        return self[name]

    def remove(self, name: str) -> None:
        self._require(name)
        del self.weights[_key(name)]
        del self._metadata[name]

    def __getitem__(self, name: str) -> PromptRecord:
        self._require(name)
        return PromptRecord(self.weights[_key(name)], self._metadata[name])

    def _require(self, name: str) -> None:
        if name not in self._metadata:
            raise SoftpromptError(f"unknown prompt {name!r}; loaded prompts: {', '.join(self.names) or 'none'}")

    def gather(self, names: Sequence[str], device: torch.device) -> Prompts:
        """The distinct prompts that `names` (one per example) use, and each example's index into them."""
        distinct = list(dict.fromkeys(names))
        weights = [self[name].weight for name in distinct]
        position = {name: k for k, name in enumerate(distinct)}
        index = torch.tensor([position[n] for n in names], dtype=torch.long, device=device)  # (b,)
        return Prompts(weights, index)
