"""Writing files and folders so that a crash never leaves a half-written or lost one behind.

A folder (a tokenizer, a cache, a checkpoint) is built beside its final place and swapped in with
renames; `recover_folder` finishes or undoes a swap that a crash interrupted, so readers only ever
see complete folders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(data: Any, encoding: str = "utf-8", **options: Any) -> str:
    """`data` as JSON with its text as people read it ("è", not "\\u00e8"), for a file or stream in `encoding`.

    Where `encoding` cannot write a character (stdout in ASCII, a lone surrogate from a file name),
    the whole text is escaped as json.dumps does by default: still the same JSON.
    """
    text = json.dumps(data, ensure_ascii=False, **options)
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return json.dumps(data, **options)
    return text


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json_text(data, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; a line is written with one call so a kill cannot split it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json_text(record, sort_keys=True) + "\n")


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def swap_in(new: Path, path: Path) -> None:
    """Replace folder `path` by folder `new` (same parent): two renames, the old copy deleted last."""
    old = _old_path(path)
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(path: str | os.PathLike) -> None:
    """Put back the previous version of `path` if a crash fell between the renames of `swap_in`."""
    path = Path(path)
    old = _old_path(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
    for stale in path.parent.glob(f".{path.name}.*.tmp") if path.parent.exists() else ():
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
