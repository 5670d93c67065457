"""Classification tasks defined by a table row: a template over record fields, label strings, a metric."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from softprompt.tasks.base import Example, Metric, Task
from softprompt.tasks.records import Record
from softprompt.tasks.sources import HubSource, LocalFile, LocalReader, source_of, split_records


@dataclass(frozen=True)
class ClassificationSpec:
    """Everything that differs between two text-classification tasks.

    `labels` are in the order of the datasets' integer labels (0 -> labels[0]).
    `local_file` names the file `local` reads for a split, for error messages.
    `group` names the unit a metric scores together (a MultiRC question);
    `allow_empty` lists template fields that official data may leave empty.
    """

    name: str
    template: str
    labels: tuple[str, ...]
    metric: Metric
    local: LocalReader
    local_file: LocalFile
    hub: HubSource
    group: Callable[[Record], str] | None = None
    allow_empty: tuple[str, ...] = ()


def classification_example(spec: ClassificationSpec, record: Record, labelled: bool) -> Example:
    """One record as an example; the target is the label's string, or "" for unlabelled test rows.

    Raises SoftpromptError when a labelled split's row has no label or an illegal one.
    """
    index = record.label_index(spec.labels)
    if index is None and labelled:
        raise record.error("label", "is missing")
    return Example(
        input=record.render(spec.template, spec.allow_empty),
        target="" if index is None else spec.labels[index],
        candidates=spec.labels,
        group=spec.group(record) if spec.group else None,
    )


def classification_task(spec: ClassificationSpec) -> Task:
    """The Task for one table row."""

    def load(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        records = split_records(split, data_dir, spec.local, spec.hub)
        return [classification_example(spec, record, labelled=split != "test") for record in records]

    return Task(name=spec.name, load=load, metric=spec.metric, labels=spec.labels, source=source_of(spec.local_file, spec.hub))
