"""The pretraining corpus: text files read once, tokenised once, saved as a flat token cache.

Cache folder (the hand-off between stages; pretraining needs only this folder and the tokenizer):
  train.npy    1-D token ids, every document followed by `</s>` (uint16 if the vocabulary fits, else int32)
  val.npy      the held-out validation documents, same layout
  corpus.json  format, dtype, vocabulary size and fingerprint of the tokenizer, eos id, document and token
               counts, <unk> rate, per-source counts, the CorpusConfig used; written last
Documents are shuffled (seeded) before the split, so the validation slice is a random sample of documents.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from ..errors import SoftpromptError
from ..files import atomic_folder, recover_folder, write_json_atomic
from . import tokenizer as tok_lib

CACHE_FORMAT = "softprompt-corpus-cache/1"
FORMATS = ("auto", "text", "wikiextractor", "jsonl")
_TITLE = re.compile(r'title="([^"]*)"')


@dataclass
class CorpusSource:
    """One file or folder of text. `format`: text (a document per line), wikiextractor, jsonl, or auto."""

    path: str
    format: str = "auto"
    field: str = "text"  # JSONL: the field holding the text


@dataclass
class CorpusConfig:
    """How documents are chosen and split; saved in corpus.json."""

    min_chars: int = 40  # shorter lines are titles, WikiExtractor section headings ("Career.") or list debris
    val_fraction: float = 0.01  # held-out share of documents for validation loss and perplexity
    max_val_tokens: int = 500_000  # cap on the validation slice; evaluation reads only a few batches of it
    seed: int = 0  # document shuffle before the split
    encode_batch: int = 2048  # documents per batch sent to the fast tokenizer


@dataclass
class SourceStats:
    path: str
    format: str
    lines: int = 0
    documents: int = 0


# --- reading ---------------------------------------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise SoftpromptError(f"{path}: corpus source not found")


def detect_format(path: Path) -> str:
    """wikiextractor if the first non-blank line opens a <doc>, jsonl by suffix, otherwise text."""
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return "wikiextractor" if line.lstrip().startswith("<doc ") else "text"
    return "text"


def _open_lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise SoftpromptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_text(path: Path, min_chars: int, stats: SourceStats) -> Iterator[str]:
    """Plain text: every line of at least `min_chars` characters is one document."""
    for line in _open_lines(path):
        stats.lines += 1
        if len(line.strip()) >= min_chars:
            yield line.strip()


def read_wikiextractor(path: Path, min_chars: int, stats: SourceStats) -> Iterator[str]:
    """WikiExtractor output: one document per <doc>, without the <doc>/</doc> lines, title or short lines."""
    paragraphs: list[str] = []
    title = None
    for line in _open_lines(path):
        stats.lines += 1
        line = line.strip()
        if line.startswith("<doc ") or line == "</doc>":
            if paragraphs:
                yield " ".join(paragraphs)
            paragraphs = []
            match = _TITLE.search(line)
            title = html.unescape(match.group(1)) if match else None
        elif len(line) >= min_chars and line != title:
            paragraphs.append(line)
    if paragraphs:
        yield " ".join(paragraphs)


def read_jsonl(path: Path, field: str, stats: SourceStats) -> Iterator[str]:
    """JSONL: the string in `field` of every record is one document."""
    for number, line in enumerate(_open_lines(path), start=1):
        stats.lines += 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SoftpromptError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise SoftpromptError(f"{path}:{number}: no text field {field!r} in this record")
        if text.strip():
            yield text.strip()


def read_source(source: CorpusSource, config: CorpusConfig) -> tuple[list[str], list[SourceStats]]:
    """All documents of one source (file or folder of files), with counts per file."""
    if source.format not in FORMATS:
        raise SoftpromptError(f"{source.path}: unknown corpus format {source.format!r}; use one of {FORMATS}")
    documents, all_stats = [], []
    for path in _files(Path(source.path)):
        fmt = detect_format(path) if source.format == "auto" else source.format
        stats = SourceStats(str(path), fmt)
        if fmt == "jsonl":
            docs = read_jsonl(path, source.field, stats)
        elif fmt == "wikiextractor":
            docs = read_wikiextractor(path, config.min_chars, stats)
        else:
            docs = read_text(path, config.min_chars, stats)
        before = len(documents)
        documents.extend(docs)
        stats.documents = len(documents) - before
        all_stats.append(stats)
    return documents, all_stats


def as_source(source: str | os.PathLike | CorpusSource) -> CorpusSource:
    return source if isinstance(source, CorpusSource) else CorpusSource(str(source))


def read_documents(
    sources: Sequence[str | os.PathLike | CorpusSource],
    config: CorpusConfig | None = None,
    extra_texts: Iterable[str] = (),
) -> tuple[list[str], list[SourceStats]]:
    """Every document of every source, then the extra texts (e.g. unlabeled task inputs), each one document.

    Raises SoftpromptError naming the sources when nothing usable is found. Settings default to CorpusConfig().
    """
    config = config if config is not None else CorpusConfig()
    documents, stats = [], []
    for source in map(as_source, sources):
        docs, source_stats = read_source(source, config)
        documents.extend(docs)
        stats.extend(source_stats)
    extra = [t.strip() for t in extra_texts if t and t.strip()]
    if extra:
        documents.extend(extra)
        stats.append(SourceStats("<extra texts>", "texts", len(extra), len(extra)))
    if not documents:
        names = ", ".join(str(as_source(s).path) for s in sources) or "no sources given"
        raise SoftpromptError(f"empty corpus: no usable lines (>= {config.min_chars} characters) in {names}")
    return documents, stats


# --- tokenising and the cache ----------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def encode_documents(documents: Sequence[str], tokenizer: PreTrainedTokenizerBase, batch: int = 2048) -> np.ndarray:
    """All documents as one flat id array, `</s>` after each (the tokenizer's post-processor appends it)."""
    dtype = token_dtype(len(tokenizer))
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: faster where available
    parts = []
    for start in range(0, len(documents), batch):
        encodings = encode(list(documents[start : start + batch]), add_special_tokens=True)
        parts.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def split_documents(documents: list[str], config: CorpusConfig) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then the last `val_fraction` of documents (at least one when there are two) are held out."""
    order = np.random.default_rng(config.seed).permutation(len(documents))
    shuffled = [documents[i] for i in order]
    n_val = min(len(shuffled) - 1, max(1, round(config.val_fraction * len(shuffled)))) if len(shuffled) > 1 else 0
    return shuffled[: len(shuffled) - n_val], shuffled[len(shuffled) - n_val :]


def build_cache(
    documents: list[str],
    stats: list[SourceStats],
    tokenizer: PreTrainedTokenizerBase,
    folder: str | os.PathLike,
    config: CorpusConfig | None = None,
) -> dict:
    """Tokenise the documents once and write the cache folder atomically; returns corpus.json's content."""
    config = config if config is not None else CorpusConfig()
    train_docs, val_docs = split_documents(documents, config)
    train = encode_documents(train_docs, tokenizer, config.encode_batch)
    val = encode_documents(val_docs, tokenizer, config.encode_batch)[: config.max_val_tokens]
    if train.size == 0:
        raise SoftpromptError(f"empty corpus: tokenising {len(train_docs)} documents gave no tokens")
    meta = {
        "format": CACHE_FORMAT,
        "dtype": str(train.dtype),
        "vocab_size": len(tokenizer),
        "tokenizer_fingerprint": tok_lib.fingerprint(tokenizer),
        "eos_id": tokenizer.eos_token_id,
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": int(train.size), "val": int(val.size)},
        "unk_fraction": float(np.mean(train == tokenizer.unk_token_id)),
        "sources": [asdict(s) for s in stats],
        "config": asdict(config),
    }
    with atomic_folder(folder) as tmp:
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        write_json_atomic(tmp / "corpus.json", meta)
    return meta


@dataclass
class CorpusCache:
    """A loaded cache: token arrays in memory and corpus.json's content."""

    train: np.ndarray
    val: np.ndarray
    meta: dict


def is_cache_folder(folder: str | os.PathLike) -> bool:
    recover_folder(folder)
    return (Path(folder) / "corpus.json").is_file()


def read_cache_meta(folder: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None) -> dict:
    """corpus.json of a cache folder, without loading its token arrays (a model card needs only this).

    With `tokenizer`, checks that the cache was made with it.

    Raises SoftpromptError if the folder is not a complete cache or was made with another tokenizer.
    """
    folder = Path(folder)
    if not is_cache_folder(folder):
        raise SoftpromptError(f"{folder}: not a corpus cache (corpus.json missing)")
    meta = json.loads((folder / "corpus.json").read_text(encoding="utf-8"))
    if meta.get("format") != CACHE_FORMAT:
        raise SoftpromptError(f"{folder / 'corpus.json'}: format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
    if tokenizer is not None and meta["tokenizer_fingerprint"] != tok_lib.fingerprint(tokenizer):
        raise SoftpromptError(
            f"{folder / 'corpus.json'}: made with another tokenizer (vocabulary {meta['vocab_size']} ids, "
            f"fingerprint {meta['tokenizer_fingerprint']}; this one has {len(tokenizer)} ids, {tok_lib.fingerprint(tokenizer)})"
        )
    return meta


def load_cache(folder: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None) -> CorpusCache:
    """Read a cache folder's token arrays and corpus.json (checked as `read_cache_meta` does)."""
    meta = read_cache_meta(folder, tokenizer)
    folder = Path(folder)
    try:
        train, val = np.load(folder / "train.npy"), np.load(folder / "val.npy")
    except (OSError, ValueError) as e:
        raise SoftpromptError(f"{folder}: unreadable token array ({e})") from None
    return CorpusCache(train, val, meta)


def task_inputs(task_names: Sequence[str], data_dir: str | os.PathLike | None) -> list[str]:
    """Unlabeled input texts of the tasks' *training* splits (never dev or test), as extra documents."""
    from ..tasks import get_task, resolve_data_dir

    root = resolve_data_dir(data_dir)
    return [example.input for name in task_names for example in get_task(name).load("train", root)]
