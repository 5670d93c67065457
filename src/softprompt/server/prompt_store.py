"""How a writable server writes prompt folders so that replicas reading the same directory never see half a change.

A prompt's files live in `.versions/NAME-HASH12/`, written complete under `.tmp-NAME-RANDOM/`
and then renamed, and `NAME` is a symlink to that version, replaced by `os.replace` of a new
link. Why links: POSIX cannot rename a folder over a non-empty one, so swapping real folders
always leaves a moment with none (or needs renameat2's exchange, which NFS lacks); replacing a
link is a single rename, atomic locally and on NFS. Versions are named by content and never
change, so a reader that resolves the link once reads both files of one version. Writers take
an flock on `.lock` while they write, relink and delete unlinked versions, so two writable
replicas cannot delete each other's new version. Every name here starts with '.', which no
prompt name does, so none of it is ever listed as a prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import SoftpromptError
from ..prompt_io import METADATA_NAME, WEIGHTS_NAME

VERSIONS, LOCK, TMP = ".versions", ".lock", ".tmp-"


@dataclass(frozen=True)
class Snapshot:
    """The bytes of one prompt, as read from its folder or uploaded: what is loaded, hashed and written is one thing."""

    weights: bytes
    metadata: bytes

    @classmethod
    def of_upload(cls, weights: bytes, raw_metadata: object) -> Snapshot:
        """An upload's prompt.json object as the file `save_prompt` writes, so an uploaded folder hashes as the folder."""
        try:
            text = json.dumps(raw_metadata, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as err:
            raise SoftpromptError(f"uploaded prompt metadata: not JSON ({err})") from None
        return cls(weights, text.encode("utf-8"))

    @property
    def digest(self) -> str:
        """sha256 of the weights then the metadata: `cat prompt.safetensors prompt.json | sha256sum` gives it too."""
        return "sha256:" + hashlib.sha256(self.weights + self.metadata).hexdigest()


def file_stat(folder: Path) -> tuple | None:
    """What changes when either file does (inode, size, mtime), so a rescan reads only changed folders; None if unknown."""
    try:
        stats = [os.stat(folder / file) for file in (WEIGHTS_NAME, METADATA_NAME)]
    except OSError:
        return None
    return (folder, *((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats))


def writer_active(root: Path, name: str) -> bool:
    """Whether a writer's temporary for `name` exists, so its folder may be missing for a moment (see `_relink`)."""
    try:
        return any(p.name.startswith(f"{TMP}{name}-") for p in root.iterdir())
    except OSError:
        return True  # cannot tell: the caller keeps the prompt


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Writers one at a time, across processes sharing the directory (flock works on local disks and NFS)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one writer is assumed
        fcntl = None
    with open(root / LOCK, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def write_prompt(root: Path, name: str, snapshot: Snapshot) -> None:
    """Make `root/name` hold `snapshot`: a complete version folder, then the link swapped to it, then old versions deleted."""
    with locked(root):
        versions = root / VERSIONS
        versions.mkdir(exist_ok=True)
        version = versions / f"{name}-{snapshot.digest.removeprefix('sha256:')[:12]}"
        if not version.is_dir():  # named by content: an existing one holds these bytes already
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP}{name}-", dir=root))
            try:
                tmp.chmod(0o755)  # mkdtemp makes it private; replicas may run as other users
                _write_synced(tmp / WEIGHTS_NAME, snapshot.weights)
                _write_synced(tmp / METADATA_NAME, snapshot.metadata)
                os.rename(tmp, version)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        _relink(root, name, Path(VERSIONS) / version.name)
        _collect(root)


def delete_prompt(root: Path, name: str) -> bool:
    """Delete folder `root/name` (a link, or a real folder moved aside first) and its versions; whether there was one."""
    link = root / name
    with locked(root):
        if link.is_symlink():
            link.unlink()
        elif link.is_dir():
            aside = root / f"{TMP}{name}-{secrets.token_hex(6)}-old"
            os.rename(link, aside)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            return False
        _collect(root)
    return True


def _relink(root: Path, name: str, target: Path) -> None:
    """Point `root/name` at `target` (relative, so replicas may mount the directory anywhere) with one rename.

    A real folder left there by hand cannot be renamed over: it is moved aside first (and put
    back if the swap fails); for that moment the new link's temporary name tells readers that a
    write is under way (`writer_active`).
    """
    link, tmp = root / name, root / f"{TMP}{name}-{secrets.token_hex(6)}"
    os.symlink(target, tmp)
    aside = None
    try:
        if link.is_dir() and not link.is_symlink():
            aside = tmp.with_name(tmp.name + "-old")
            os.rename(link, aside)
        try:
            os.replace(tmp, link)
        except OSError:
            if aside is not None:
                os.rename(aside, link)
                aside = None
            raise
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _collect(root: Path) -> None:
    """Delete versions no name links to and temporaries of writers that died; only under the lock, where no writer is."""
    linked = set()
    for entry in root.iterdir():
        if entry.name.startswith(TMP):
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_symlink():
            linked.add(entry.resolve())
    versions = root / VERSIONS
    for version in versions.iterdir() if versions.is_dir() else ():
        if version.resolve() not in linked:
            shutil.rmtree(version, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    """Write and fsync, so a version folder that exists is complete even after a power cut."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
