"""GLUE SST-2, MRPC and QQP, read from the official GLUE TSV files (glue/<Task>/{train,dev,test}.tsv)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from softprompt.tasks.classification import ClassificationSpec, classification_task
from softprompt.tasks.metrics import accuracy, f1_and_accuracy
from softprompt.tasks.records import Record, read_tsv
from softprompt.tasks.sources import HubSource, LocalFile, LocalReader, split_file

GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def glue_file(folder: str) -> LocalFile:
    """The path `glue/<folder>/<split>.tsv`."""
    return lambda root, split: split_file(root, f"glue/{folder}", GLUE_FILES, split)


def glue_reader(folder: str, rename: Mapping[str, str] | None = None) -> LocalReader:
    """Reads `glue/<folder>/<split>.tsv`, renaming the official columns to the hub's names."""
    file = glue_file(folder)

    def read(root: Path, split: str) -> Iterable[Record]:
        return read_tsv(file(root, split), rename)

    return read


SST2 = classification_task(
    ClassificationSpec(
        name="sst2",
        template="sentence: {sentence}",
        labels=("negative", "positive"),
        metric=accuracy,
        local=glue_reader("SST-2"),
        local_file=glue_file("SST-2"),
        hub=HubSource("nyu-mll/glue", "sst2"),
    )
)

MRPC = classification_task(
    ClassificationSpec(
        name="mrpc",
        template="sentence1: {sentence1} sentence2: {sentence2}",
        labels=("not_equivalent", "equivalent"),
        metric=f1_and_accuracy("equivalent"),
        local=glue_reader("MRPC", {"Quality": "label", "#1 String": "sentence1", "#2 String": "sentence2"}),
        local_file=glue_file("MRPC"),
        hub=HubSource("nyu-mll/glue", "mrpc"),
    )
)

QQP = classification_task(
    ClassificationSpec(
        name="qqp",
        template="question1: {question1} question2: {question2}",
        labels=("not_duplicate", "duplicate"),
        metric=f1_and_accuracy("duplicate"),
        local=glue_reader("QQP", {"is_duplicate": "label"}),
        local_file=glue_file("QQP"),
        hub=HubSource("nyu-mll/glue", "qqp"),
        allow_empty=("question1", "question2"),  # two official train rows have an empty question2
    )
)

GLUE_TASKS = (SST2, MRPC, QQP)
