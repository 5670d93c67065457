"""Scoring prompts: greedy generation, and rank classification over each example's candidates.

Rank classification sums each candidate's token log-probabilities and picks the best; the
encoder (or the decoder-only prefix) runs once per example. Generation decodes greedily; an
output that is not a legal label counts as wrong and the number of such outputs is reported.
Every example follows the settings of the prompt it names (target format, labels, lengths).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .data import Features, collate, encode, encode_all, sorted_batches, target_ids, unformat_target
from .device import to_device
from .distributed import SINGLE, World, gather, shard, unshard
from .errors import SoftpromptError
from .model import PromptedModel
from .tasks.base import Example, Task


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise SoftpromptError(f"batch_size={batch_size} (--batch-size) must be at least 1")


@torch.no_grad()
def generate_ids(model: PromptedModel, features: Sequence[Features], batch_size: int, max_new_tokens: int,
                 progress: bool = False, max_tokens: int | None = None) -> list[list[int]]:
    """Greedy continuation ids, in the order of `features`, each cut after its end-of-sequence token."""
    check_batch_size(batch_size)
    eos = model.adapter.tokenizer.eos_token_id
    outputs: list[list[int]] = [[] for _ in features]
    for idx in tqdm(list(sorted_batches(features, batch_size, max_tokens)), desc="generate", disable=not progress, leave=False):
        batch = to_device(collate(model.adapter, [features[i] for i in idx], with_labels=False), model.device)
        for i, row in zip(idx, model.generate(batch, max_new_tokens).tolist()):
            outputs[i] = row[: row.index(eos) + 1] if eos in row else row
    return outputs


def generated_text(model: PromptedModel, feature: Features, ids: list[int]) -> str:
    """What generation outputs for one example: its ids decoded, the prompt's target format undone."""
    text = model.adapter.decode(torch.tensor([ids], dtype=torch.long))[0]
    return unformat_target(text, model.bank[feature.prompt].metadata.target_format)


def generate_texts(model: PromptedModel, features: Sequence[Features], batch_size: int, max_new_tokens: int,
                   progress: bool = False) -> list[str]:
    """Greedy outputs, in the order of `features`, with each prompt's target format undone."""
    ids = generate_ids(model, features, batch_size, max_new_tokens, progress)
    return [generated_text(model, f, row) for f, row in zip(features, ids)]


@torch.no_grad()
def rank_scores(model: PromptedModel, features: Sequence[Features], candidates: Sequence[Sequence[str]], batch_size: int,
                progress: bool = False, max_tokens: int | None = None) -> list[list[float]]:
    """Each example's candidate log-likelihoods (summed over tokens), in the order of `features` and its candidates."""
    check_batch_size(batch_size)
    cache: dict[tuple[str, str], list[int]] = {}

    def ids(prompt: str, text: str) -> list[int]:
        if (prompt, text) not in cache:
            cache[prompt, text] = target_ids(model.adapter, model.bank[prompt], text)
        return cache[prompt, text]

    scores: list[list[float]] = [[] for _ in features]
    for idx in tqdm(list(sorted_batches(features, batch_size, max_tokens)), desc="rank", disable=not progress, leave=False):
        batch = to_device(collate(model.adapter, [features[i] for i in idx], with_labels=False), model.device)
        pairs = [(row, ids(features[i].prompt, c)) for row, i in enumerate(idx) for c in candidates[i]]
        width = max(len(c) for _, c in pairs)
        cand_ids = torch.tensor([c + [-100] * (width - len(c)) for _, c in pairs], device=model.device)  # (c, m)
        pair_example = torch.tensor([row for row, _ in pairs], device=model.device)  # (c,)
        batch_scores = model.score(batch, pair_example, cand_ids).float().cpu()
        for (row, _), score in zip(pairs, batch_scores.tolist()):
            scores[idx[row]].append(score)
    return scores


def rank_texts(model: PromptedModel, features: Sequence[Features], candidates: Sequence[Sequence[str]], batch_size: int,
               progress: bool = False) -> list[str]:
    """The highest-likelihood candidate of each example, in the order of `features`."""
    scores = rank_scores(model, features, candidates, batch_size, progress)
    return [best_candidate(options, row) for options, row in zip(candidates, scores)]


def best_candidate(options: Sequence[str], scores: Sequence[float]) -> str:
    return options[list(scores).index(max(scores))]  # ties: the first


def evaluate(model: PromptedModel, task: Task, examples: Sequence[Example], prompt: str, method: str = "rank",
             batch_size: int = 64, progress: bool = False, outputs: dict[str, list[str]] | None = None,
             world: World = SINGLE) -> dict[str, float]:
    """The task's metrics for prompt `prompt`; `method` is "rank", "generate" or "both".

    `outputs`, when given, receives each method's output texts in example order (for per-example
    statistics: a paired bootstrap over dev examples needs to know which examples each run got right).

    Rank classification applies to examples with candidates; where a task has none (free-text
    answers, WSC) generation is used instead. Keys are prefixed by the method when both run.
    On several processes (`world`), each rank scores its share of the examples and the outputs are
    gathered back in order, so every rank computes the same metrics (and picks the same best step).
    Raises SoftpromptError for unlabeled examples (a test split): there is nothing to score against.
    """
    if examples and not any(e.target for e in examples):
        raise SoftpromptError(f"task {task.name}: these examples have no targets (a test split?), so they cannot be scored; "
                              "use `softprompt predict` for outputs")
    record = model.bank[prompt]
    mine = shard(list(range(len(examples))), world)  # every example on one process
    features = encode_all(model.adapter, prompt, record, [examples[i] for i in mine], task.name, with_target=False)
    methods = ["rank", "generate"] if method == "both" else [method]
    if not all(e.candidates for e in examples):
        methods = ["generate"]
    results: dict[str, float] = {}
    for name in methods:
        if name == "rank":
            texts = rank_texts(model, features, [examples[i].candidates for i in mine], batch_size, progress)
        else:
            max_new = max(len(target_ids(model.adapter, record, e.target)) for e in examples) + 2  # over all ranks' examples
            texts = generate_texts(model, features, batch_size, max(max_new, 4), progress)
        if world.distributed:
            texts = unshard(gather(texts))
        if outputs is not None:
            outputs[name] = texts
        scores = task.metric(texts, examples)
        if name == "generate" and all(e.candidates for e in examples):
            scores["invalid"] = float(sum(t not in e.candidates for t, e in zip(texts, examples)))
        prefix = f"{name}_" if len(methods) > 1 else ""
        results.update({prefix + k: v for k, v in scores.items()})
    return results


def predict(model: PromptedModel, requests: Sequence[tuple[str, str]], method: str = "generate", batch_size: int = 64,
            max_new_tokens: int = 16) -> list[str]:
    """Outputs for (prompt name, input text) pairs; prompts mix freely within a batch.

    Rank classification chooses among the labels saved with each prompt.
    Raises SoftpromptError for an unknown prompt name, an empty input, or a prompt without labels under "rank".
    """
    check_batch_size(batch_size)
    features, candidates = [], []
    for row, (name, text) in enumerate(requests, start=1):
        try:
            record = model.bank[name]
            features.append(encode(model.adapter, name, record, Example(text, ""), with_target=False))
        except SoftpromptError as err:
            raise SoftpromptError(f"input {row}: {err}") from None
        if method == "rank" and not record.labels:
            raise SoftpromptError(f"input {row}: prompt {name!r} has no labels, so it cannot rank; use generation")
        candidates.append(record.labels)
    if method == "rank":
        return rank_texts(model, features, candidates, batch_size)
    return generate_texts(model, features, batch_size, max_new_tokens)
