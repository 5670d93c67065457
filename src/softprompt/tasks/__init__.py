"""The registry of benchmark tasks, looked up by name, plus custom tasks from the user's files."""

from __future__ import annotations

import os

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import SPLITS, Example, Metric, Task, hold_out, require_examples, task_key
from softprompt.tasks.custom import CustomTaskSpec, custom_task
from softprompt.tasks.glue import GLUE_TASKS
from softprompt.tasks.qa import QA_TASKS, load_mrqa, mrqa_task
from softprompt.tasks.sources import DATA_DIR_ENV, resolve_data_dir
from softprompt.tasks.superglue import SUPERGLUE_TASKS
from softprompt.tasks.transfer import (
    BUILTIN_LABEL_MAPS,
    PARAPHRASE_LABEL_MAP,
    check_label_map,
    label_map_for,
    mapped_task,
    parse_label_map,
)

TASKS: dict[str, Task] = {task.name: task for task in (*GLUE_TASKS, *SUPERGLUE_TASKS, *QA_TASKS)}


_BY_KEY = {task_key(name): task for name, task in TASKS.items()}


def get_task(name: str) -> Task:
    """The registered task called `name`; raises SoftpromptError listing the known names."""
    task = _BY_KEY.get(task_key(name))
    if task is None:
        raise SoftpromptError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return task


def load_task(name: str, task_spec: dict | None = None) -> Task:
    """The named task, or the custom task that `task_spec` (CustomTaskSpec fields) describes."""
    if task_spec is not None:
        return custom_task(CustomTaskSpec.from_dict(task_spec, "custom task spec"))
    return get_task(name)


def load_examples(task: Task | str, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """A split's examples: from `data_dir`, else $SOFTPROMPT_DATA_DIR, else the Hugging Face hub."""
    return (get_task(task) if isinstance(task, str) else task).load(split, data_dir)


__all__ = [
    "BUILTIN_LABEL_MAPS",
    "DATA_DIR_ENV",
    "PARAPHRASE_LABEL_MAP",
    "SPLITS",
    "TASKS",
    "CustomTaskSpec",
    "Example",
    "Metric",
    "Task",
    "check_label_map",
    "custom_task",
    "get_task",
    "hold_out",
    "label_map_for",
    "load_examples",
    "load_task",
    "load_mrqa",
    "mapped_task",
    "mrqa_task",
    "parse_label_map",
    "require_examples",
    "resolve_data_dir",
]
