"""What every task is: examples as (input text, target text), its legal labels, and its metric."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from softprompt.errors import SoftpromptError

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
    its first key being the one used to keep the best prompt. `source(split, data_dir)` says
    where `load` reads that split from (a file path, a hub dataset), for error messages.
    """

    name: str
    load: Callable[[str, Path | None], list[Example]]
    metric: Metric
    labels: tuple[str, ...] | None = None
    init_words: tuple[str, ...] = field(default=())
    source: Callable[[str, Path | None], str] | None = None

    @property
    def class_words(self) -> tuple[str, ...]:
        """Words for class-label initialisation: the labels, else the task's word list."""
        return self.labels or self.init_words

    def describe(self, split: str, data_dir: str | os.PathLike | None = None) -> str:
        """Where `split` is read from: the local file, else the hub dataset, else "task <name>, <split> split".

        Meant for building error messages, so it raises nothing of its own: a source that cannot
        say (a split the task lacks, a data directory that does not exist) gives the fallback.
        """
        fallback = f"task {self.name}, {split} split"
        if self.source is None:
            return fallback
        try:
            return self.source(split, data_dir)
        except SoftpromptError:
            return fallback


def require_examples(
    task: Task, split: str, data_dir: str | os.PathLike | None, examples: Sequence[Example]
) -> list[Example]:
    """`examples` as a list; raises SoftpromptError naming where the split came from when there are none.

    An empty split (a CSV with only its header row) would otherwise surface later as a
    division by zero or an empty batch, far from the file at fault.
    """
    if not examples:
        raise SoftpromptError(f"{task.describe(split, data_dir)}: the {split} split of task {task.name} holds no examples")
    return list(examples)


SELECT_SEED = 20_211_107  # fixed: every run of a task holds out the same examples, whatever its own seed


def hold_out(examples: Sequence[Example], n: int, source: str) -> tuple[list[Example], list[Example]]:
    """(the rest, n held-out examples): a fixed random sample of the training split to choose the best step on.

    Choosing the step on the dev set and reporting that same dev score selects on the test set;
    holding out part of the training file keeps the dev score honest. The sample does not depend
    on the run's seed, so runs that differ only by seed are scored on the same held-out rows, and
    both parts keep the file's order. Raises SoftpromptError when the split has no room for it.
    """
    if n >= len(examples):
        raise SoftpromptError(f"select_examples={n} (--select-examples): {source} has only {len(examples)} examples; "
                              "hold out fewer so some are left to train on")
    held = set(random.Random(SELECT_SEED).sample(range(len(examples)), n))
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def task_key(name: str) -> str:
    """A task name as looked up: case, hyphens, underscores and spaces do not matter ("SST-2" is "sst2")."""
    return re.sub(r"[-_\s]", "", name.lower())
