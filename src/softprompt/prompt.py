"""The paper's ways of initialising a [p, e] soft prompt (§3.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .config import PromptConfig
from .errors import SoftpromptError

if TYPE_CHECKING:
    from .backbones import Backbone


@dataclass
class InitialPrompt:
    """The starting matrix (p, e), the initialisation actually used, and why it differs if it does."""

    weight: torch.Tensor
    init: str
    note: str | None = None


def sampled_vocab_rows(embeddings: torch.Tensor, candidate_ids: Sequence[int], count: int, generator: torch.Generator) -> torch.Tensor:
    """Embeddings of `count` tokens drawn from `candidate_ids`, without replacement while possible."""
    ids = torch.tensor(candidate_ids, dtype=torch.long)
    if count <= len(ids):
        picks = ids[torch.randperm(len(ids), generator=generator)[:count]]
    else:
        picks = ids[torch.randint(len(ids), (count,), generator=generator)]
    return embeddings[picks.to(embeddings.device)].float().cpu()  # (count, e)


def word_embedding(embeddings: torch.Tensor, ids: list[int], word: str) -> torch.Tensor:
    """A word's vector: the mean of its sub-token embeddings (paper §3.2, class-label init)."""
    if not ids:
        raise SoftpromptError(f"class-label initialisation: label {word!r} has no tokens")
    return embeddings[torch.tensor(ids, device=embeddings.device)].float().mean(0).cpu()  # (e,)


def initial_prompt(config: PromptConfig, backbone: Backbone, class_words: Sequence[str] = (),
                   generator: torch.Generator | None = None, allow_other_backbone: bool = False) -> InitialPrompt:
    """The starting [p, e] matrix for `config.init` on `backbone`.

    Class-label init without labels or a word list (SQuAD, free-text custom tasks) falls back to
    sampled vocabulary, as the paper does for positions beyond the labels, and says so in `note`.
    Raises SoftpromptError for an unusable setting, or an init file for another backbone.
    """
    from .prompt_io import check_compatible, load_prompt  # prompt files depend on the config, not the reverse

    generator = generator or torch.Generator().manual_seed(0)
    embeddings = backbone.embeddings.detach()
    p, e = config.length, embeddings.shape[1]
    candidates = backbone.common_token_ids()[: config.vocab_sample_size]

    def filled(rows: list[torch.Tensor]) -> torch.Tensor:  # (p, e): rows, then sampled vocabulary
        rows = rows[:p]
        rest = sampled_vocab_rows(embeddings, candidates, p - len(rows), generator)
        return torch.cat([torch.stack(rows), rest]) if rows else rest  # (p, e)

    if config.init == "random-uniform":
        r = config.init_range
        return InitialPrompt(torch.rand(p, e, generator=generator) * 2 * r - r, config.init)
    if config.init == "sampled-vocab":
        return InitialPrompt(sampled_vocab_rows(embeddings, candidates, p, generator), config.init)
    if config.init == "class-label":
        if not class_words:
            note = "class-label initialisation: the task has no labels or word list, so the prompt starts from sampled vocabulary"
            return InitialPrompt(sampled_vocab_rows(embeddings, candidates, p, generator), "sampled-vocab", note)
        return InitialPrompt(filled([word_embedding(embeddings, backbone.word_ids(w), w) for w in class_words]), config.init)
    if config.init == "text":
        ids = backbone.word_ids(config.init_text or "")
        return InitialPrompt(filled([embeddings[i].float().cpu() for i in ids]), config.init)
    weight, metadata = load_prompt(config.init_file)  # init == "file"
    check_compatible(metadata, str(config.init_file), backbone, allow_other_backbone)
    if tuple(weight.shape) != (p, e):
        raise SoftpromptError(f"{config.init_file}: prompt has shape {tuple(weight.shape)}, this run needs ({p}, {e})")
    return InitialPrompt(weight.float(), config.init)
