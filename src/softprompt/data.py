"""From examples to padded tensor batches: tokenising, target formats, length-grouped order.

Encoder-decoder batches are right-padded inputs with separate labels; decoder-only batches
are left-padded "input target" sequences whose labels ignore the input part. Either way the
real tokens are contiguous, which is what the prompt splice relies on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .errors import SoftpromptError
from .tasks.base import Example

SENTINEL = "<extra_id_0>"


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
    """One tokenised example; `prompt` indexes the model's prompt bank."""

    input_ids: list[int]
    target_ids: list[int]
    prompt: int = 0

    @property
    def length(self) -> int:
        return len(self.input_ids) + len(self.target_ids)


@dataclass
class Encoder:
    """Turns text into token ids the way each backbone kind expects."""

    tokenizer: PreTrainedTokenizerBase
    is_encoder_decoder: bool
    max_input_length: int = 512
    max_target_length: int = 16
    target_format: str = "plain"

    def input_ids(self, text: str) -> list[int]:
        if not text.strip():
            raise SoftpromptError("empty input text")
        # T5's tokenizer appends </s> to inputs; GPT-2's adds nothing.
        return self.tokenizer(text, truncation=True, max_length=self.max_input_length).input_ids

    def target_ids(self, target: str) -> list[int]:
        """Target tokens, ending with the end-of-sequence token so generation knows to stop."""
        text = format_target(target, self.target_format)
        if self.is_encoder_decoder:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_target_length).input_ids
        else:
            ids = self.tokenizer(" " + text, add_special_tokens=False).input_ids[: self.max_target_length - 1]
            ids = ids + [self.tokenizer.eos_token_id]
        return ids

    def features(self, example: Example, prompt: int = 0, with_target: bool = True) -> Features:
        target = self.target_ids(example.target) if with_target else []
        return Features(self.input_ids(example.input), target, prompt)

    def encode_all(self, examples: Sequence[Example], source: str, prompt: int = 0, with_target: bool = True) -> list[Features]:
        """Tokenise a split; a bad row is reported by its position in `source`."""
        out = []
        for row, example in enumerate(examples, start=1):
            try:
                out.append(self.features(example, prompt, with_target))
            except SoftpromptError as err:
                raise SoftpromptError(f"{source}, example {row}: {err}") from None
        return out


def pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    """Stack lists of ids into (b, max_len), padding on the left or the right."""
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def collate(batch: Sequence[Features], pad_id: int, is_encoder_decoder: bool, with_labels: bool = True) -> dict[str, torch.Tensor]:
    """A batch for `PromptedModel`: input_ids, attention_mask, prompt_index (and labels)."""
    prompt_index = torch.tensor([f.prompt for f in batch], dtype=torch.long)  # (b,)
    if is_encoder_decoder or not with_labels:
        left = not is_encoder_decoder
        out = {
            "input_ids": pad([f.input_ids for f in batch], pad_id, left),  # (b, n)
            "attention_mask": pad([[1] * len(f.input_ids) for f in batch], 0, left),
            "prompt_index": prompt_index,
        }
        if with_labels:
            out["labels"] = pad([f.target_ids for f in batch], -100, left=False)  # (b, m)
        return out
    sequences = [f.input_ids + f.target_ids for f in batch]
    return {
        "input_ids": pad(sequences, pad_id, left=True),  # (b, n + m)
        "attention_mask": pad([[1] * len(s) for s in sequences], 0, left=True),
        "labels": pad([[-100] * len(f.input_ids) + f.target_ids for f in batch], -100, left=True),
        "prompt_index": prompt_index,
    }


LENGTH_GROUP_FACTOR = 50  # batches whose examples are sorted by length together


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


def sorted_batches(features: Sequence[Features], batch_size: int) -> Iterator[list[int]]:
    """Evaluation order: longest first, so padding is minimal; callers restore the order."""
    order = sorted(range(len(features)), key=lambda i: -features[i].length)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
