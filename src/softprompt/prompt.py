"""The soft prompt: a [p, e] matrix, and the paper's ways of initialising it."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .config import INITS, PromptConfig
from .errors import SoftpromptError

Encode = Callable[[str], list[int]]


class SoftPrompt(nn.Module):
    """The only trained parameter of prompt tuning: p vectors of the backbone's embedding width."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())  # (p, e)

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    @property
    def width(self) -> int:
        return self.weight.shape[1]


def most_common_token_ids(vocab_size: int, special_ids: Sequence[int], k: int) -> list[int]:
    """The k most common tokens, taken as the lowest non-special ids.

    SentencePiece unigram vocabularies (T5, and the project's own backbones) are stored in
    order of descending piece score, and byte-level BPE vocabularies (GPT-2) in order of
    merge rank, so a low id means a frequent token in both.
    """
    special = set(special_ids)
    ids = [i for i in range(vocab_size) if i not in special]
    return ids[:k]


def sampled_vocab_rows(
    embeddings: torch.Tensor, candidate_ids: Sequence[int], count: int, generator: torch.Generator
) -> torch.Tensor:
    """Embeddings of `count` tokens drawn from `candidate_ids`, without replacement while possible."""
    ids = torch.tensor(candidate_ids, dtype=torch.long)
    if count <= len(ids):
        picks = ids[torch.randperm(len(ids), generator=generator)[:count]]
    else:
        picks = ids[torch.randint(len(ids), (count,), generator=generator)]
    return embeddings[picks].float()  # (count, e)


def word_embedding(embeddings: torch.Tensor, encode: Encode, word: str) -> torch.Tensor:
    """A word's vector: the mean of its sub-token embeddings (paper §3.2, class-label init)."""
    ids = encode(word)
    if not ids:
        raise SoftpromptError(f"class-label initialisation: label {word!r} has no tokens")
    return embeddings[torch.tensor(ids)].float().mean(0)  # (e,)


def initial_prompt(
    config: PromptConfig,
    embeddings: torch.Tensor,
    encode: Encode,
    common_ids: Sequence[int],
    class_words: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The starting [p, e] matrix for `config.init`.

    `embeddings` is the backbone's input embedding table (V, e); `encode` turns text into
    token ids without special tokens; `common_ids` are the most common token ids.
    Raises SoftpromptError for an unknown init or an unusable setting.
    """
    from .prompt_io import load_prompt  # prompt files depend on this module, not the reverse

    generator = generator or torch.Generator().manual_seed(0)
    p, e = config.length, embeddings.shape[1]
    if p < 0:
        raise SoftpromptError(f"prompt length must not be negative, got {p}")
    candidates = list(common_ids)[: config.vocab_sample_size]

    def filled(rows: list[torch.Tensor]) -> torch.Tensor:  # (p, e): rows, then sampled vocabulary
        rows = rows[:p]
        rest = sampled_vocab_rows(embeddings, candidates, p - len(rows), generator)
        return torch.cat([torch.stack(rows), rest]) if rows else rest  # (p, e)

    if config.init == "random-uniform":
        r = config.init_range
        return torch.rand(p, e, generator=generator) * 2 * r - r
    if config.init == "sampled-vocab":
        return sampled_vocab_rows(embeddings, candidates, p, generator)
    if config.init == "class-label":
        if not class_words:
            raise SoftpromptError("class-label initialisation needs a task with labels or a word list")
        return filled([word_embedding(embeddings, encode, w) for w in class_words])
    if config.init == "text":
        if not config.init_text:
            raise SoftpromptError("init 'text' needs --init-text")
        ids = encode(config.init_text)
        return filled([embeddings[i].float() for i in ids])
    if config.init == "file":
        if not config.init_file:
            raise SoftpromptError("init 'file' needs --init-file pointing to a saved prompt")
        weight, _ = load_prompt(config.init_file)
        if tuple(weight.shape) != (p, e):
            raise SoftpromptError(
                f"{config.init_file}: prompt has shape {tuple(weight.shape)}, "
                f"this run needs ({p}, {e})"
            )
        return weight.float()
    raise SoftpromptError(f"unknown init {config.init!r}; choose one of {', '.join(INITS)}")
