"""The cache of converted backbones: ordinary Hugging Face folders, built once and read on every later load.

Root: `$SOFTPROMPT_CACHE`, else `$XDG_CACHE_HOME/softprompt`, else `~/.cache/softprompt`.

An entry is built in a hidden temporary folder beside its final place and renamed into it
(`files.atomic_folder`), so a killed build leaves no entry, only a `.NAME.*.tmp` folder that the next
build of that entry removes. The last file written into an entry is its manifest (`MANIFEST`): what
the entry was built from and the size of every other file in it. An entry whose manifest is missing,
unreadable or contradicted by the files (a truncated `model.safetensors`, a deleted `config.json`) is
rebuilt, never read. Builds are serialised between processes by an advisory lock (POSIX), so two
processes that miss the same entry build it once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import SoftpromptError
from ..files import atomic_folder, recover_folder, write_json_atomic

try:
    import fcntl
except ImportError:  # Windows: builds are not serialised between processes
    fcntl = None

CACHE_ENV = "SOFTPROMPT_CACHE"
MANIFEST = "softprompt-cache.json"
MANIFEST_VERSION = 1
LOCK_NAME = ".lock"


def cache_root() -> Path:
    """Where cache entries live: `$SOFTPROMPT_CACHE`, else the user's cache folder + `softprompt`."""
    if value := os.environ.get(CACHE_ENV):
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "softprompt"


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache entry; `built` tells whether this call built it (False: an existing one was found)."""

    folder: Path
    built: bool


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(folder: Path, expect: dict) -> bool:
    """Whether `folder` is a finished entry whose manifest records `expect` and matches every file's size."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("version") != MANIFEST_VERSION:
        return False
    if any(manifest.get(key) != value for key, value in expect.items()):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def write_manifest(folder: Path, record: dict) -> None:
    """The manifest of a freshly built entry: `record` plus every file's size (it is written last)."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_json_atomic(folder / MANIFEST, {"version": MANIFEST_VERSION, **record, "files": files})


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold the lock of the folder that holds entries (an empty lock file; it stays, as lock files must)."""
    if fcntl is None:
        yield
        return
    with open(folder / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_folder(name: str, expect: dict, build: Callable[[Path], None], record: dict | None = None,
                  rebuild: bool = False) -> CacheEntry:
    """The entry `cache_root()/name`, built by `build(empty_folder)` unless a complete one records `expect`.

    `rebuild` builds it again even if it looks complete (it failed to load). `build` raises
    SoftpromptError for bad input; nothing of a failed build stays behind.
    """
    folder = cache_root() / name
    if not rebuild and is_complete(folder, expect):
        return CacheEntry(folder, built=False)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SoftpromptError(f"cannot create the cache folder {folder.parent} ({err.strerror or err}); "
                              f"set {CACHE_ENV} to a writable folder") from None
    with _build_lock(folder.parent):
        recover_folder(folder)  # finish a swap a crash interrupted; remove temporary folders of killed builds
        if not rebuild and is_complete(folder, expect):  # another process built it while this one waited
            return CacheEntry(folder, built=False)
        try:
            with atomic_folder(folder) as tmp:
                build(tmp)
                write_manifest(tmp, {**expect, **(record or {})})
        except OSError as err:
            raise SoftpromptError(f"cannot write the cache entry {folder} ({err.strerror or err}); "
                                  f"free some space or set {CACHE_ENV} to another folder") from None
    return CacheEntry(folder, built=True)
