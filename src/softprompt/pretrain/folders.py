"""Writing a whole folder (a tokenizer, a cache, a checkpoint) so that a crash never leaves a half-written one.

The folder is built beside its final place and swapped in with renames; `recover_folder`
finishes or undoes a swap that a crash interrupted, so readers only ever see complete folders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
