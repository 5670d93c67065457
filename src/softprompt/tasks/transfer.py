"""Zero-shot label maps: a prompt trained on one task scored on another by reading each label as one of its own.

A map goes from the evaluated task's labels to the prompt's labels ("duplicate=equivalent"
scores QQP with an MRPC prompt). The mapped task loads the same data, rewrites targets and
candidates into the prompt's labels, and scores in that label space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import Example, Task, task_key
from softprompt.tasks.metrics import accuracy_and_macro_f1

# (prompt task, evaluated task) -> evaluated task's label -> prompt task's label.
# SuperGLUE's diagnostics AX-b and AX-g share RTE's labels, so an RTE prompt reads them as they are.
RTE_IDENTITY = {"entailment": "entailment", "not_entailment": "not_entailment"}
BUILTIN_LABEL_MAPS: dict[tuple[str, str], dict[str, str]] = {
    ("mrpc", "qqp"): {"duplicate": "equivalent", "not_duplicate": "not_equivalent"},
    ("qqp", "mrpc"): {"equivalent": "duplicate", "not_equivalent": "not_duplicate"},
    ("rte", "cb"): {"entailment": "entailment", "contradiction": "not_entailment", "neutral": "not_entailment"},
    ("rte", "axb"): RTE_IDENTITY,
    ("rte", "axg"): RTE_IDENTITY,
}

# QQP read with an MRPC prompt (the paper's zero-shot paraphrase transfer), under its older name.
PARAPHRASE_LABEL_MAP = BUILTIN_LABEL_MAPS[("mrpc", "qqp")]

_BUILTIN_BY_KEY = {(task_key(prompt), task_key(task)): mapping for (prompt, task), mapping in BUILTIN_LABEL_MAPS.items()}


def parse_label_map(text: str) -> dict[str, str]:
    """A map written "task_label=prompt_label,..." (whitespace around names is ignored).

    Raises SoftpromptError naming the bad piece for an empty entry or name, a piece without
    exactly one '=', or a task label given twice.
    """
    mapping: dict[str, str] = {}
    for number, piece in enumerate(text.split(","), start=1):
        if not piece.strip():
            raise SoftpromptError(f"label map {text!r}: entry {number} is empty; write task_label=prompt_label")
        if piece.count("=") != 1:
            raise SoftpromptError(f"label map {text!r}: {piece.strip()!r} needs exactly one '='; write task_label=prompt_label")
        task_label, prompt_label = (name.strip() for name in piece.split("="))
        if not task_label or not prompt_label:
            raise SoftpromptError(f"label map {text!r}: {piece.strip()!r} has an empty label name")
        if task_label in mapping:
            raise SoftpromptError(f"label map {text!r}: task label {task_label!r} is mapped twice")
        mapping[task_label] = prompt_label
    return mapping


def label_map_for(prompt_task: str | None, task: Task) -> dict[str, str] | None:
    """The built-in map for scoring `task` with a prompt trained on `prompt_task`; None when there is none.

    None also covers a prompt scored on its own task, which needs no map.
    """
    if prompt_task is None:
        return None
    mapping = _BUILTIN_BY_KEY.get((task_key(prompt_task), task_key(task.name)))
    return dict(mapping) if mapping is not None else None


def check_label_map(task: Task, mapping: dict[str, str], prompt_labels: Sequence[str]) -> None:
    """Checks that `mapping` sends every label of `task`, and nothing else, to one of `prompt_labels`.

    Raises SoftpromptError naming the label and both label lists: for a task without labels,
    a key that is not a task label, a value that is not a prompt label, a task label left out.
    """
    theirs = f"the prompt's labels are {', '.join(prompt_labels)}"
    if task.labels is None:
        raise SoftpromptError(f"task {task.name} has no labels, so a label map cannot apply to it ({theirs})")
    ours = f"task {task.name} has labels {', '.join(task.labels)}"
    for task_label, prompt_label in mapping.items():
        if task_label not in task.labels:
            raise SoftpromptError(f"label map: {task_label!r} is not a label of task {task.name} ({ours}; {theirs})")
        if prompt_label not in prompt_labels:
            raise SoftpromptError(f"label map: {task_label!r} maps to {prompt_label!r}, not a prompt label ({ours}; {theirs})")
    for task_label in task.labels:
        if task_label not in mapping:
            raise SoftpromptError(f"label map leaves out label {task_label!r} of task {task.name} ({ours}; {theirs})")


def mapped_task(task: Task, mapping: dict[str, str], prompt_labels: Sequence[str]) -> Task:
    """`task` as a prompt with `prompt_labels` sees it: the same examples, labels read through `mapping`.

    Targets, candidates and answers are rewritten into the prompt's labels; candidates keep only
    the labels the map reaches, in the prompt's order, and the metric (accuracy, then macro-F1)
    is taken over those; a map that renames nothing keeps the task's own metric (AX-b's
    Matthews correlation). The name stays the task's, so results still say which data was scored.
    Raises SoftpromptError as check_label_map does.
    """
    prompt_labels = tuple(prompt_labels)
    check_label_map(task, mapping, prompt_labels)
    reached = tuple(label for label in prompt_labels if label in mapping.values())

    def mapped(example: Example) -> Example:
        candidates = {mapping[candidate] for candidate in example.candidates}
        return replace(
            example,
            target=mapping[example.target] if example.target else "",  # "" is an unlabelled test row
            candidates=tuple(label for label in reached if label in candidates),
            answers=tuple(mapping[answer] for answer in example.answers),
        )

    def load(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        return [mapped(example) for example in task.load(split, data_dir)]

    same = all(k == v for k, v in mapping.items()) and reached == tuple(task.labels)
    return replace(task, load=load, metric=task.metric if same else accuracy_and_macro_f1(reached), labels=prompt_labels)
