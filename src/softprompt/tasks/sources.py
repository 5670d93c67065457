"""Where a task's rows come from: local files under a data directory, else the Hugging Face hub.

Tasks read local files in their official layout and turn them into flat records with the
hub's column names, so one converter per task serves both sources and the hub is read
here only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import SPLITS
from softprompt.tasks.records import Record

DATA_DIR_ENV = "SOFTPROMPT_DATA_DIR"

# Reads one split's records from a data directory.
LocalReader = Callable[[Path, str], Iterable[Record]]

# The file a LocalReader reads for one split of a data directory.
LocalFile = Callable[[Path, str], Path]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory to read: the argument, else $SOFTPROMPT_DATA_DIR, else None (use the hub).

    Raises SoftpromptError when the chosen directory does not exist.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise SoftpromptError(f"data directory {path} does not exist")
    return path


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise SoftpromptError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class HubSource:
    """A dataset on the hub and how its columns map to the task's record fields.

    `reshape` adapts a row whose columns are nested differently (SQuAD's answers); `splits`
    names a split the hub calls otherwise (SuperGLUE's labelled diagnostics are its "test").
    """

    path: str
    config: str | None = None
    rename: Mapping[str, str] = field(default_factory=dict)
    reshape: Callable[[dict], dict] | None = None
    splits: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The dataset as messages name it: "hub nyu-mll/glue/sst2"."""
        return f"hub {self.path}/{self.config}" if self.config else f"hub {self.path}"


def hub_records(source: HubSource, split: str) -> Iterator[Record]:
    """Rows of one split from the hub as records; raises SoftpromptError when it cannot be fetched."""
    try:
        from datasets import load_dataset

        rows = load_dataset(source.path, source.config, split=source.splits.get(split, split))
    except Exception as e:  # network, auth, unknown config: all are one user-facing failure
        raise SoftpromptError(
            f"cannot load {source.path}/{source.config} ({split}) from the Hugging Face hub: {e}; "
            f"set {DATA_DIR_ENV} or pass a data directory to read local files"
        ) from None
    for index, row in enumerate(rows):
        fields = {source.rename.get(name, name): value for name, value in row.items()}
        if source.reshape is not None:
            fields = source.reshape(fields)
        yield Record(fields, f"{source.name} {split}, row {index}")


def split_records(
    split: str, data_dir: str | os.PathLike | None, local: LocalReader, hub: HubSource | None
) -> Iterable[Record]:
    """One split's records, from the resolved data directory if there is one, else from the hub."""
    check_split(split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        return local(root, split)
    if hub is None:
        raise SoftpromptError(f"this task has no hub source; set {DATA_DIR_ENV} or pass a data directory")
    return hub_records(hub, split)


def split_file(root: Path, folder: str, files: Mapping[str, str], split: str) -> Path:
    """The file holding `split` in `root/folder`; raises SoftpromptError when the task lacks that split."""
    if split not in files:
        raise SoftpromptError(f"{root / folder}: this task has no {split} split (has {', '.join(files)})")
    return root / folder / files[split]


def split_source(split: str, data_dir: str | os.PathLike | None, local: LocalFile, hub: HubSource | None) -> str:
    """Where split_records reads `split`: the local file under the resolved data directory, else the hub dataset.

    Raises SoftpromptError as split_records does (unknown split, missing data directory, no hub source).
    """
    check_split(split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        return str(local(root, split))
    if hub is None:
        raise SoftpromptError(f"this task has no hub source; set {DATA_DIR_ENV} or pass a data directory")
    return hub.name


def source_of(local: LocalFile, hub: HubSource | None) -> Callable[[str, Path | None], str]:
    """A Task's `source`: split_source over one task's local file layout and hub dataset."""
    return lambda split, data_dir: split_source(split, data_dir, local, hub)
