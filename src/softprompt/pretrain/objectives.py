"""The two pretraining objectives, vectorised over a whole batch in numpy.

Span corruption (T5, Raffel et al. 2020): 15% of the tokens, in spans of mean length 3, are each
replaced by one sentinel in the input; the target lists each sentinel followed by its span.
Prefix LM (T5's "prefix_lm", used for LM adaptation by Lester et al. 2021): a window split at a
random point; the input is the prefix, the target its continuation.

Each objective maps windows of corpus tokens (b, window_length) to fixed-shape torch tensors
`input_ids`, `attention_mask`, `labels` (-100 where the target is padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SoftpromptError

Batch = dict[str, torch.Tensor]
IGNORE = -100  # labels at padding: ignored by the cross-entropy


@dataclass
class SpanCorruptionConfig:
    noise_density: float = 0.15  # T5 (Raffel et al. 2020, section 3.3)
    mean_noise_span_length: float = 3.0  # T5


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) in a window of `length` tokens, rounded as T5's random_spans_noise_mask."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, num_spans


def corrupted_lengths(tokens_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(input length, target length) with `</s>` for a window of `tokens_length` corpus tokens."""
    num_noise, num_spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(corpus tokens per example, target length) so that inputs are exactly `inputs_length` long.

    T5's `compute_input_and_target_lengths`: the longest window whose corrupted input still fits,
    so batches are fixed-shape with no padding.
    """
    tokens_length = inputs_length - 1
    while corrupted_lengths(tokens_length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)[1]


def _random_segmentation(batch: int, num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (b, num_segments) of a uniformly random split of `num_items` into non-empty segments."""
    if num_segments == 1:
        return np.full((batch, 1), num_items)
    keys = rng.random((batch, num_items - 1))  # one key per gap between items
    cuts = np.argpartition(keys, num_segments - 2, axis=1)[:, : num_segments - 1]  # (b, s-1) random distinct gaps
    cuts.sort(axis=1)
    bounds = np.concatenate([np.zeros((batch, 1), cuts.dtype), cuts + 1, np.full((batch, 1), num_items)], axis=1)
    return np.diff(bounds, axis=1)  # (b, s)


def random_spans_noise_mask(
    batch: int, length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean (b, length), True at noise tokens: T5's random_spans_noise_mask for a whole batch.

    Every row has the same number of noise tokens and spans; rows start with non-noise and end with noise.
    """
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(batch, num_noise, num_spans, rng)  # (b, s)
    nonnoise_lengths = _random_segmentation(batch, length - num_noise, num_spans, rng)  # (b, s)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=2).reshape(batch, 2 * num_spans)  # (b, 2s)
    span_starts = np.cumsum(interleaved, axis=1)[:, :-1]  # (b, 2s-1), distinct, all < length
    indicator = np.zeros((batch, length), dtype=np.int8)
    np.put_along_axis(indicator, span_starts, 1, axis=1)
    return np.cumsum(indicator, axis=1, dtype=np.int32) % 2 == 1  # odd span number = noise


def replace_spans(tokens: np.ndarray, spans: np.ndarray, first_sentinel: int) -> np.ndarray:
    """Each True span of `spans` becomes one sentinel (<extra_id_0>, <extra_id_1>, ... counting down from
    `first_sentinel`), as T5's noise_span_to_unique_sentinel; every row must keep the same count."""
    previous = np.zeros_like(spans)
    previous[:, 1:] = spans[:, :-1]
    starts = spans & ~previous  # (b, l) first token of each span
    sentinels = first_sentinel + 1 - np.cumsum(starts, axis=1)  # (b, l) k-th span -> first_sentinel - k
    filled = np.where(starts, sentinels, tokens)
    keep = ~spans | starts
    return filled[keep].reshape(tokens.shape[0], -1)  # (b, kept)


def _with_eos(ids: np.ndarray, eos_id: int) -> np.ndarray:
    return np.concatenate([ids, np.full((ids.shape[0], 1), eos_id, ids.dtype)], axis=1)


def _to_torch(input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray) -> Batch:
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
        "attention_mask": torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
    }


class SpanCorruption:
    """T5's span corruption with fixed shapes: windows (b, window_length) -> inputs (b, inputs_length),
    labels (b, targets_length), no padding."""

    def __init__(self, inputs_length: int, first_sentinel: int, eos_id: int, num_sentinels: int = 100,
                 config: SpanCorruptionConfig | None = None):
        config = config if config is not None else SpanCorruptionConfig()
        self.config = config
        self.first_sentinel, self.eos_id = first_sentinel, eos_id
        self.window_length, self.targets_length = compute_input_and_target_lengths(
            inputs_length, config.noise_density, config.mean_noise_span_length
        )
        self.inputs_length = corrupted_lengths(self.window_length, config.noise_density, config.mean_noise_span_length)[0]
        spans = noise_counts(self.window_length, config.noise_density, config.mean_noise_span_length)[1]
        if spans > num_sentinels:
            raise SoftpromptError(f"inputs_length={inputs_length} needs {spans} sentinels, the tokenizer has {num_sentinels}")

    def corrupt(self, windows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) as int64 arrays, each ending in `</s>`."""
        windows = windows.astype(np.int64)
        mask = random_spans_noise_mask(len(windows), windows.shape[1], self.config.noise_density,
                                       self.config.mean_noise_span_length, rng)  # (b, window)
        inputs = _with_eos(replace_spans(windows, mask, self.first_sentinel), self.eos_id)  # (b, inputs_length)
        targets = _with_eos(replace_spans(windows, ~mask, self.first_sentinel), self.eos_id)  # (b, targets_length)
        return inputs, targets

    def __call__(self, windows: np.ndarray, rng: np.random.Generator) -> Batch:
        inputs, targets = self.corrupt(windows, rng)
        return _to_torch(inputs, np.ones_like(inputs), targets)


class PrefixLM:
    """T5's prefix LM: a window of `inputs_length - 1` tokens split uniformly at random (as
    random_prefix_noise_mask with noise density 0.5); input = prefix + `</s>`, target = rest + `</s>`,
    each padded to its length."""

    def __init__(self, inputs_length: int, targets_length: int, eos_id: int, pad_id: int = 0):
        if inputs_length < 3 or targets_length < 2:
            raise SoftpromptError(f"prefix LM lengths {inputs_length}/{targets_length} are too short (need >= 3/2)")
        self.inputs_length, self.targets_length = inputs_length, targets_length
        self.window_length = inputs_length - 1
        self.eos_id, self.pad_id = eos_id, pad_id
        # split k tokens into the prefix: 1 <= k <= window-1, and the rest + </s> must fit the target
        self.min_split = max(1, self.window_length - targets_length + 1)

    def split(self, windows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, split points); inputs/targets padded with pad_id after their `</s>`."""
        b, w = windows.shape
        windows = windows.astype(np.int64)
        k = rng.integers(self.min_split, w, size=b)  # (b,) prefix lengths, in [min_split, w-1]
        rows = np.arange(b)
        positions = np.arange(w)[None, :]  # (1, w)
        inputs = np.full((b, self.inputs_length), self.pad_id, np.int64)
        inputs[:, :w] = np.where(positions < k[:, None], windows, self.pad_id)
        inputs[rows, k] = self.eos_id
        source = k[:, None] + np.arange(self.targets_length)[None, :]  # (b, targets_length) window index per slot
        targets = np.where(source < w, np.take_along_axis(windows, np.minimum(source, w - 1), axis=1), self.pad_id)
        targets[rows, w - k] = self.eos_id
        return inputs, targets, k

    def __call__(self, windows: np.ndarray, rng: np.random.Generator) -> Batch:
        inputs, targets, k = self.split(windows, rng)
        slots = np.arange(self.inputs_length)[None, :]
        attention_mask = (slots <= k[:, None]).astype(np.int64)  # prefix + </s>
        target_slots = np.arange(self.targets_length)[None, :]
        labels = np.where(target_slots <= (windows.shape[1] - k)[:, None], targets, IGNORE)  # rest + </s>
        return _to_torch(inputs, attention_mask, labels)
