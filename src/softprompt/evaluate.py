"""Scoring prompts: greedy generation, and rank classification over each example's candidates.

Rank classification sums each candidate's token log-probabilities and picks the best; the
encoder runs once per example. Generation decodes greedily; an output that is not a legal
label counts as wrong and the number of such outputs is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import Encoder, Features, collate, sorted_batches, unformat_target
from .errors import SoftpromptError
from .model import PromptedModel
from .tasks.base import Example, Task


@dataclass
class Predictions:
    texts: list[str]
    method: str


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def generate_texts(model: PromptedModel, features: Sequence[Features], encoder: Encoder, batch_size: int, max_new_tokens: int, progress: bool = False) -> list[str]:
    """Greedy outputs, in the order of `features`, with the target format undone."""
    texts: list[str] = [""] * len(features)
    batches = list(sorted_batches(features, batch_size))
    for idx in tqdm(batches, desc="generate", disable=not progress, leave=False):
        batch = collate([features[i] for i in idx], model.tokenizer.pad_token_id, model.is_encoder_decoder, with_labels=False)
        out = model.generate(**to_device(batch, model.device), max_new_tokens=max_new_tokens)
        decoded = model.tokenizer.batch_decode(out, skip_special_tokens=True)
        for i, text in zip(idx, decoded):
            texts[i] = unformat_target(text, encoder.target_format)
    return texts


@torch.no_grad()
def rank_scores(model: PromptedModel, features: Sequence[Features], candidates: Sequence[Sequence[str]], encoder: Encoder, batch_size: int, progress: bool = False) -> list[list[float]]:
    """Each example's candidate log-likelihoods (summed over tokens), in the order of `features` and its candidates."""
    cache: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in cache:
            cache[text] = encoder.target_ids(text)
        return cache[text]

    scores: list[list[float]] = [[] for _ in features]
    batches = list(sorted_batches(features, batch_size))
    for idx in tqdm(batches, desc="rank", disable=not progress, leave=False):
        batch = collate([features[i] for i in idx], model.tokenizer.pad_token_id, model.is_encoder_decoder, with_labels=False)
        pairs = [(row, c) for row, i in enumerate(idx) for c in candidates[i]]
        width = max(len(ids(c)) for _, c in pairs)
        cand_ids = torch.tensor([ids(c) + [-100] * (width - len(ids(c))) for _, c in pairs])  # (c, m)
        pair_example = torch.tensor([row for row, _ in pairs])  # (c,)
        batch_scores = model.score_candidates(**to_device(batch, model.device), pair_example=pair_example.to(model.device), candidate_ids=cand_ids.to(model.device)).cpu()
        for (row, _), score in zip(pairs, batch_scores.tolist()):
            scores[idx[row]].append(score)
    return scores


def rank_texts(model: PromptedModel, features: Sequence[Features], candidates: Sequence[Sequence[str]], encoder: Encoder, batch_size: int, progress: bool = False) -> list[str]:
    """The highest-likelihood candidate of each example, in the order of `features`."""
    scores = rank_scores(model, features, candidates, encoder, batch_size, progress)
    return [options[row.index(max(row))] for options, row in zip(candidates, scores)]  # ties: the first


def evaluate(
    model: PromptedModel,
    task: Task,
    examples: Sequence[Example],
    encoder: Encoder,
    prompt: int = 0,
    method: str = "rank",
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """The task's metrics for one prompt; `method` is "rank", "generate" or "both".

    Rank classification applies to examples with candidates; where a task has none (free-text
    answers, WSC) generation is used instead. Keys are prefixed by the method when both run.
    """
    features = encoder.encode_all(examples, task.name, prompt, with_target=False)
    methods = ["rank", "generate"] if method == "both" else [method]
    if not all(e.candidates for e in examples):
        methods = ["generate"]
    results: dict[str, float] = {}
    for name in methods:
        if name == "rank":
            texts = rank_texts(model, features, [e.candidates for e in examples], encoder, batch_size, progress)
        else:
            max_new = max(len(encoder.target_ids(e.target)) for e in examples) + 2
            texts = generate_texts(model, features, encoder, batch_size, max(max_new, 4), progress)
        scores = task.metric(texts, examples)
        if name == "generate" and all(e.candidates for e in examples):
            scores["invalid"] = float(sum(t not in e.candidates for t, e in zip(texts, examples)))
        prefix = f"{name}_" if len(methods) > 1 else ""
        results.update({prefix + k: v for k, v in scores.items()})
    return results


def predict(
    model: PromptedModel,
    requests: Sequence[tuple[str, str]],
    encoder: Encoder,
    method: str = "generate",
    batch_size: int = 64,
    max_new_tokens: int = 16,
) -> list[str]:
    """Outputs for (prompt name, input text) pairs; prompts mix freely within a batch.

    Rank classification chooses among the labels saved with each prompt.
    Raises SoftpromptError for an unknown prompt name or a prompt without labels under "rank".
    """
    names = model.prompt_names
    features, candidates = [], []
    for row, (name, text) in enumerate(requests, start=1):
        if name not in names:
            raise SoftpromptError(f"input {row}: unknown prompt {name!r}; loaded prompts: {', '.join(names)}")
        try:
            features.append(encoder.features(Example(text, ""), names.index(name), with_target=False))
        except SoftpromptError as err:
            raise SoftpromptError(f"input {row}: {err}") from None
        metadata = model.prompt_metadata.get(name)
        labels = tuple(metadata.labels) if metadata and metadata.labels else ()
        if method == "rank" and not labels:
            raise SoftpromptError(f"input {row}: prompt {name!r} has no labels, so it cannot rank; use generation")
        candidates.append(labels)
    if method == "rank":
        return rank_texts(model, features, candidates, encoder, batch_size)
    return generate_texts(model, features, encoder, batch_size, max_new_tokens)
