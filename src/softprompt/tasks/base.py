"""What every task is: examples as (input text, target text), its legal labels, and its metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

# Split names used everywhere; each task maps them to its own files.
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One text-to-text example.

    `candidates` are the strings rank classification chooses among for this example
    (the task's labels for classification; the entities for ReCoRD); empty means the
    task is scored by generation only. `answers` are all gold strings for QA metrics.
    `group` ties examples that a metric scores together (a MultiRC question).
    `label` keeps the original label value when the target alone does not say it (WSC).
    """

    input: str
    target: str
    candidates: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    group: str | None = None
    label: object = None


Metric = Callable[[Sequence[str], Sequence[Example]], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """A benchmark as text to text.

    `labels` are the legal outputs of a classification task (None for free text);
    `init_words` seed class-label initialisation where labels are not short words.
    `load(split, data_dir)` reads the examples; `metric(predictions, examples)` scores them,
    its first key being the one used to keep the best prompt.
    """

    name: str
    load: Callable[[str, Path | None], list[Example]]
    metric: Metric
    labels: tuple[str, ...] | None = None
    init_words: tuple[str, ...] = field(default=())

    @property
    def class_words(self) -> tuple[str, ...]:
        """Words for class-label initialisation: the labels, else the task's word list."""
        return self.labels or self.init_words
