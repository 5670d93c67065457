"""A user's own task from JSONL, CSV or TSV files: a template builds the input, one field is the target."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import Example, Task
from softprompt.tasks.metrics import accuracy_and_macro_f1, squad_f1_em
from softprompt.tasks.records import Record, read_csv, read_jsonl, read_tsv, template_fields
from softprompt.tasks.sources import check_split

READERS = {".jsonl": read_jsonl, ".csv": read_csv, ".tsv": read_tsv}


@dataclass(frozen=True)
class CustomTaskSpec:
    """A custom task; the file format comes from each file's extension (.jsonl, .csv, .tsv).

    `input_template` is str.format over a row's fields ("review: {text}"). With `labels`,
    the task is classification (every target must be a label); without, free text scored
    by SQuAD-style EM/F1.
    """

    train_file: str | os.PathLike
    input_template: str
    target_field: str
    validation_file: str | os.PathLike | None = None
    test_file: str | os.PathLike | None = None
    labels: tuple[str, ...] | None = None
    name: str = "custom"

    def file_for(self, split: str) -> Path:
        """The file of `split`; raises SoftpromptError when the spec has none."""
        check_split(split)
        path = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}[split]
        if path is None:
            raise SoftpromptError(f"custom task {self.name!r} has no {split} file")
        return Path(path)


def absolute_path(path: str | os.PathLike) -> Path:
    """`path` made absolute against the working directory, "~", "." and ".." spelled out; links are kept."""
    return Path(os.path.abspath(Path(path).expanduser()))


def custom_rows(path: Path) -> Iterator[Record]:
    """The rows of a .jsonl, .csv or .tsv file."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SoftpromptError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(READERS)}")
    return reader(path)


def target_text(record: Record, field: str) -> str:
    """The target field as text: JSON numbers and booleans are written as Python prints them."""
    value = record.value(field)
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise record.error(field, "is empty")
    return text.strip()


def custom_example(spec: CustomTaskSpec, record: Record, labelled: bool) -> Example:
    """One row as an example; raises SoftpromptError on a missing field or a target outside the labels."""
    target = target_text(record, spec.target_field) if labelled or record.has(spec.target_field) else ""
    if spec.labels and target and target not in spec.labels:
        labels = ", ".join(spec.labels)
        raise record.error(spec.target_field, f"has value {target!r}, which is not one of the labels {labels}")
    return Example(
        input=record.render(spec.input_template),
        target=target,
        candidates=spec.labels or (),
        answers=() if spec.labels or not target else (target,),
    )


def checked_labels(spec: CustomTaskSpec) -> tuple[str, ...] | None:
    """The spec's labels as a tuple; raises SoftpromptError unless they are distinct non-empty strings."""
    if spec.labels is None:
        return None
    labels = tuple(spec.labels) if not isinstance(spec.labels, str) else ()
    if not labels or len(set(labels)) != len(labels) or not all(isinstance(l, str) and l.strip() for l in labels):
        raise SoftpromptError(
            f"custom task {spec.name!r}: labels must be distinct non-empty strings, got {spec.labels!r}"
        )
    return labels


def custom_task(spec: CustomTaskSpec) -> Task:
    """The Task a spec describes; raises SoftpromptError on a malformed template or label list."""
    template_fields(spec.input_template)
    labels = checked_labels(spec)
    spec = replace(spec, labels=labels)

    def load(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """Reads the spec's file for `split`; `data_dir` is unused (the spec names its files)."""
        rows = custom_rows(spec.file_for(split))
        return [custom_example(spec, record, labelled=split != "test") for record in rows]

    def source(split: str, data_dir: str | os.PathLike | None = None) -> str:
        """The spec's file for `split` as an absolute path; raises SoftpromptError when it has none."""
        return str(absolute_path(spec.file_for(split)))

    metric = accuracy_and_macro_f1(labels) if labels else squad_f1_em
    return Task(name=spec.name, load=load, metric=metric, labels=labels, source=source)
