"""From examples to batches: tokenising through the backbone's adapter, target formats, batch order.

Every example is tokenised with the settings of the prompt it is for (its record's target format
and lengths), so a batch may mix prompts trained with different settings. The layout of a batch
(padding side, where targets go) is the adapter's business: `collate` only gathers features.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .backbones import Backbone
from .bank import PromptRecord
from .errors import SoftpromptError
from .tasks.base import Example

SENTINEL = "<extra_id_0>"
LENGTH_GROUP_FACTOR = 50  # batches whose examples are sorted by length together


def format_target(target: str, target_format: str) -> str:
    """The paper's "span corruption + sentinel" setting puts a sentinel before every target (§3.3)."""
    return f"{SENTINEL} {target}" if target_format == "sentinel" else target


def unformat_target(text: str, target_format: str) -> str:
    """Undo `format_target` on a generated string, before it is scored."""
    text = text.strip()
    if target_format == "sentinel" and text.startswith(SENTINEL):
        text = text[len(SENTINEL):]
    return text.strip()


@dataclass(frozen=True)
class Features:
    """One tokenised example and the name of the prompt it wears."""

    input_ids: list[int]
    target_ids: list[int]
    prompt: str = ""

    @property
    def length(self) -> int:
        return len(self.input_ids) + len(self.target_ids)


def target_ids(backbone: Backbone, record: PromptRecord, target: str) -> list[int]:
    """A target's ids in the record's target format and length."""
    metadata = record.metadata
    return backbone.target_ids(format_target(target, metadata.target_format), metadata.max_target_length)


def encode(backbone: Backbone, name: str, record: PromptRecord, example: Example, with_target: bool = True) -> Features:
    """One example for prompt `name`; the input is cut to what fits beside the prompt.

    Raises SoftpromptError for an empty input, or a prompt too long for the backbone's positions.
    """
    if not example.input.strip():
        raise SoftpromptError("empty input text")
    metadata = record.metadata
    budget = backbone.input_budget(record.length, metadata.max_input_length, metadata.max_target_length)
    target = target_ids(backbone, record, example.target) if with_target else []
    return Features(backbone.input_ids(example.input, budget), target, name)


def encode_all(backbone: Backbone, name: str, record: PromptRecord, examples: Sequence[Example], source: str,
               with_target: bool = True) -> list[Features]:
    """Tokenise a split for prompt `name`; a bad row is reported by its position in `source`."""
    out = []
    for row, example in enumerate(examples, start=1):
        try:
            out.append(encode(backbone, name, record, example, with_target))
        except SoftpromptError as err:
            raise SoftpromptError(f"{source}, example {row}: {err}") from None
    return out


def collate(backbone: Backbone, batch: Sequence[Features], with_labels: bool = True) -> dict:
    """A batch in the adapter's layout, plus "prompts": the prompt name of each example."""
    targets = [f.target_ids for f in batch] if with_labels else None
    return {**backbone.collate([f.input_ids for f in batch], targets), "prompts": [f.prompt for f in batch]}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                           group_factor: int = LENGTH_GROUP_FACTOR) -> list[list[int]]:
    """One epoch's batches: shuffled, then grouped by similar length so padding stays small.

    Lengths are sorted within chunks of `group_factor` batches; `group_factor=1` gives random batches.
    The order depends only on (seed, epoch), so a resumed run can find its place again.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(features: Sequence[Features], batch_size: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Evaluation order: longest first, so padding is minimal; callers restore the order.

    With `max_tokens`, a batch also ends before its padded size (examples x its longest, the
    first) would pass that many tokens: on a CPU, several short forwards beat one long padded one.
    """
    order = sorted(range(len(features)), key=lambda i: -features[i].length)
    batch: list[int] = []
    for i in order:
        full = len(batch) >= batch_size or (max_tokens is not None and batch and (len(batch) + 1) * features[batch[0]].length > max_tokens)
        if full:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class BatchStream:
    """Endless batches (length-grouped or random) whose position (epoch, index) can be saved and restored."""

    def __init__(self, features: list[Features], batch_size: int, seed: int, group_by_length: bool):
        self.features, self.batch_size, self.seed = features, batch_size, seed
        self.lengths = [f.length for f in features]
        self.group_factor = LENGTH_GROUP_FACTOR if group_by_length else 1  # 1: each batch is a random draw
        self.epoch, self.index = 0, 0
        self._batches = self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.group_factor)

    def next(self) -> list[Features]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch_batches()
        batch = self._batches[self.index]
        self.index += 1
        return [self.features[i] for i in batch]

    def position(self) -> tuple[int, int]:
        return self.epoch, self.index

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index
        self._batches = self._epoch_batches()

