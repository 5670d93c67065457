"""A user's own task from JSONL, CSV or TSV files: a template builds the input, one field is the target."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import Example, Task
from softprompt.tasks.metrics import accuracy_and_macro_f1, squad_f1_em
from softprompt.tasks.records import Record, read_csv, read_jsonl, read_tsv, template_fields
from softprompt.tasks.sources import check_split

READERS = {".jsonl": read_jsonl, ".csv": read_csv, ".tsv": read_tsv}


@dataclass(frozen=True)
class CustomTaskSpec:
    """A custom task; the file format comes from each file's extension (.jsonl, .csv, .tsv).

    `input_template` is str.format over a row's fields ("review: {text}"); a dotted name reads a
    field of a nested JSON object ("{review.text}"), and so may `target_field`. With `labels`,
    the task is classification (every target must be a label); without, free text scored
    by SQuAD-style EM/F1. Each field's metadata holds its one-line "help" (and "flag" where
    the command line spells it differently), so front ends describe the spec from here.
    """

    train_file: str | os.PathLike = field(metadata={"help": "training rows: a .jsonl, .csv or .tsv file"})
    input_template: str = field(
        metadata={"help": "str.format template over a row's fields, e.g. 'review: {text}'; {review.text} reads a nested field"}
    )
    target_field: str = field(metadata={"help": "the row field that holds the target text (a dotted path reads a nested field)"})
    validation_file: str | os.PathLike | None = field(
        default=None, metadata={"help": "validation rows, in any of the training file's formats", "flag": "dev-file"}
    )
    test_file: str | os.PathLike | None = field(default=None, metadata={"help": "test rows; their target field may be absent"})
    labels: tuple[str, ...] | None = field(
        default=None, metadata={"help": "the legal targets, making the task classification; omit for free text"}
    )
    name: str = field(default="custom", metadata={"help": "the task's name in results and prompt metadata"})

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON data: paths absolute, labels a list.

        Specs naming the same files give equal dicts however the paths were spelled
        ("./x.jsonl", "x.jsonl", the absolute path), so saved specs compare as equal.
        """
        return {
            "train_file": str(absolute_path(self.train_file)),
            "input_template": self.input_template,
            "target_field": self.target_field,
            "validation_file": None if self.validation_file is None else str(absolute_path(self.validation_file)),
            "test_file": None if self.test_file is None else str(absolute_path(self.test_file)),
            "labels": None if self.labels is None else list(self.labels),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> CustomTaskSpec:
        """The spec that JSON data (as to_dict writes it) describes; `source` says where the data was read.

        Raises SoftpromptError naming `source` and the field when data is not an object,
        a field is unknown, a required field is missing, or a value has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise SoftpromptError(f"{source}: a custom task spec must be an object, found {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for name in data:
            if name not in known:
                raise spec_error(source, name, f"is unknown (known fields: {', '.join(known)})")
        values = {}
        for spec_field in fields(cls):
            if spec_field.name in data:
                values[spec_field.name] = spec_value(spec_field, data[spec_field.name], source)
            elif spec_field.default is MISSING:
                raise spec_error(source, spec_field.name, "is missing")
        return cls(**values)

    def file_for(self, split: str) -> Path:
        """The file of `split`; raises SoftpromptError when the spec has none."""
        check_split(split)
        path = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}[split]
        if path is None:
            raise SoftpromptError(f"custom task {self.name!r} has no {split} file")
        return Path(path)


def spec_error(source: str, name: str, problem: str) -> SoftpromptError:
    """The error for a bad field of a custom task spec read from `source`."""
    return SoftpromptError(f"{source}: custom task spec field '{name}' {problem}")


def spec_value(spec_field: Field, value: Any, source: str) -> Any:
    """A from_dict value checked against its field: labels a list of strings (kept as a tuple), others text.

    None is accepted where the field's default is None. Raises SoftpromptError naming `source` and the field.
    """
    if value is None and spec_field.default is None:
        return None
    if spec_field.name == "labels":
        if not isinstance(value, (list, tuple)) or not all(isinstance(label, str) for label in value):
            raise spec_error(source, "labels", f"must be a list of strings, found {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise spec_error(source, spec_field.name, f"must be a string, found {type(value).__name__} {value!r}")
    return value


def absolute_path(path: str | os.PathLike) -> Path:
    """`path` made absolute against the working directory, "~", "." and ".." spelled out; links are kept."""
    return Path(os.path.abspath(Path(path).expanduser()))


def custom_rows(path: Path) -> Iterator[Record]:
    """The rows of a .jsonl, .csv or .tsv file."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SoftpromptError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(READERS)}")
    return reader(path)


def target_text(record: Record, name: str) -> str:
    """The target field (or dotted path) as text: JSON numbers and booleans are written as Python prints them."""
    value = record.scalar(name)
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise record.error(name, "is empty")
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
    if not labels or len(set(labels)) != len(labels) or not all(isinstance(label, str) and label.strip() for label in labels):
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
