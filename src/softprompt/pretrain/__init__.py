"""Building a small T5 backbone offline: tokenizer -> token cache -> span corruption -> LM adaptation.

Each stage writes a documented folder that the next one reads, so stages can run alone, on other
machines, and a rerun skips what is complete and resumes what was interrupted:

  out_dir/tokenizer/         T5-style unigram tokenizer (tokenizer.py)
  out_dir/cache/             tokenised corpus: train.npy, val.npy, corpus.json (corpus.py)
  out_dir/span-corruption/   checkpoint after span corruption (loop.py, checkpoint.py), with README.md
  out_dir/lm-adapted/        checkpoint after LM adaptation: the backbone for prompt tuning, with README.md
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..errors import SoftpromptError
from .card import write_model_card
from .checkpoint import package_checkpoint, read_summary
from .config import PretrainConfig
from .corpus import (
    CorpusCache,
    CorpusConfig,
    CorpusSource,
    build_cache,
    is_cache_folder,
    load_cache,
    read_cache_meta,
    read_documents,
)
from .loop import pretrain
from .presets import PRESETS, build_model, parameter_count
from .stages import BackboneConfig, PretrainStages
from .tokenizer import TokenizerConfig, is_tokenizer_folder, load_tokenizer, train_and_save

__all__ = [
    "BackboneConfig", "CorpusCache", "CorpusConfig", "CorpusSource", "PRESETS", "PretrainConfig", "PretrainStages",
    "TokenizerConfig", "build_backbone", "build_corpus_cache", "build_model", "lineage", "load_cache", "load_tokenizer",
    "package_checkpoint", "parameter_count", "pretrain", "read_cache_meta", "train_tokenizer", "write_lineage_card",
]

Source = str | os.PathLike | CorpusSource


def train_tokenizer(sources: Sequence[Source], out_dir: str | os.PathLike, config: TokenizerConfig | None = None,
                    corpus: CorpusConfig | None = None, extra_texts: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """Train a T5-style unigram tokenizer on the documents of `sources` (+ extra texts) into `out_dir`.

    Raises SoftpromptError for a missing or unreadable source or an empty corpus. Settings default to
    TokenizerConfig() and CorpusConfig().
    """
    documents, _ = read_documents(sources, corpus, extra_texts)
    return train_and_save(documents, out_dir, config)


def build_corpus_cache(sources: Sequence[Source], tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       config: CorpusConfig | None = None, extra_texts: Iterable[str] = ()) -> dict:
    """Tokenise `sources` (+ extra texts, e.g. unlabeled task inputs) once into the cache folder `out_dir`.

    Returns corpus.json's content. Raises SoftpromptError for a bad source, an empty corpus or a bad tokenizer folder.
    """
    config = config if config is not None else CorpusConfig()
    documents, stats = read_documents(sources, config, extra_texts)
    return build_cache(documents, stats, load_tokenizer(tokenizer_dir), out_dir, config)


def build_backbone(out_dir: str | os.PathLike, sources: Sequence[Source], config: BackboneConfig | None = None,
                   extra_texts: Iterable[str] = (), command: str = "") -> dict:
    """Run every stage into `out_dir` (tokenizer, cache, span corruption, LM adaptation), skipping complete ones.

    Returns {"checkpoint": final folder, "complete": bool, "stages": {name: summary}}; "complete" is
    false when a stage stopped at its wall-clock limit (call again to resume). `command` is recorded
    in the model cards. Raises SoftpromptError as the stages do. Settings default to BackboneConfig().
    """
    config = config if config is not None else BackboneConfig()
    out = Path(out_dir)
    tokenizer_dir, cache_dir = out / "tokenizer", out / "cache"
    span_dir, lm_dir = out / "span-corruption", out / "lm-adapted"
    extra = list(extra_texts)
    if not (is_tokenizer_folder(tokenizer_dir) and is_cache_folder(cache_dir)):
        documents, stats = read_documents(sources, config.corpus, extra)
        if not is_tokenizer_folder(tokenizer_dir):
            train_and_save(documents, tokenizer_dir, config.tokenizer)
        build_cache(documents, stats, load_tokenizer(tokenizer_dir), cache_dir, config.corpus)
    corpus_meta = read_cache_meta(cache_dir, load_tokenizer(tokenizer_dir))
    stages: dict[str, dict] = {}
    stages["span-corruption"] = _stage(config.span_corruption, "span-corruption", cache_dir, span_dir, command,
                                       tokenizer_dir=tokenizer_dir)
    if stages["span-corruption"]["complete"]:
        write_lineage_card(span_dir, corpus_meta)
        stages["lm-adapt"] = _stage(config.lm_adapt, "lm-adapt", cache_dir, lm_dir, command, init_from=span_dir)
    complete = all(s["complete"] for s in stages.values()) and len(stages) == 2
    if complete:
        write_lineage_card(lm_dir, corpus_meta)
    return {"checkpoint": str(lm_dir if complete else span_dir), "complete": complete, "stages": stages}


def lineage(checkpoint: str | os.PathLike) -> dict[str, dict]:
    """The summaries of every stage that made `checkpoint`, oldest first, found by following `init_from`.

    A later round of an objective already in the chain is named "lm-adapt (round 2)", "span-corruption (round 2)"
    and so on.
    The chain stops where a folder no longer holds a summary (moved, or a hub checkpoint).
    """
    chain, folder = [], Path(checkpoint)
    while (summary := read_summary(folder)) is not None:
        chain.append(summary)
        if not summary.get("init_from"):
            break
        folder = Path(summary["init_from"])
    stages: dict[str, dict] = {}
    for summary in reversed(chain):
        rounds = sum(1 for s in stages.values() if s["objective"] == summary["objective"])
        stages[summary["objective"] + (f" (round {rounds + 1})" if rounds else "")] = summary
    return stages


def write_lineage_card(checkpoint: str | os.PathLike, corpus_meta: dict) -> Path:
    """The model card of `checkpoint`: every stage of its lineage and the commands that ran them, in order."""
    stages = lineage(checkpoint)
    commands = list(dict.fromkeys(s.get("command") or "" for s in stages.values()))
    return write_model_card(checkpoint, stages, corpus_meta, "\n".join(c for c in commands if c))


def _stage(config: PretrainConfig, objective: str, cache_dir: Path, run_dir: Path, command: str, **paths) -> dict:
    if config.objective != objective:
        raise SoftpromptError(f"BackboneConfig: the {objective} stage has objective={config.objective!r}")
    return pretrain(config, cache_dir, run_dir, command=command, **paths)
