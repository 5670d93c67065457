"""What every study is: a list of run points, how one point runs, and the rule that judges the result.

A point is a full typed config (a `TrainConfig` where the point trains) plus its setting label and
seed. A training point's run directory is keyed by its normalised config, ROOT/points/TASK-HASH
(runs.py), so a second study under the same ROOT that needs the same run (p = 100 class-label is
the default cell of several) reuses it, and the training loop's own exact resume carries an
interrupted point on. A study module subclasses `Study`, lists its points and, where a point is not
a plain training run (an ensemble scored in one batch, neighbours of a prompt), says how it runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from ..backbones import Backbone, BackboneSpec, load_backbone
from ..backbones.loading import T5_NANO_LM_ADAPTED
from ..config import PromptConfig, TrainConfig
from ..tasks import Example, Task, load_task, require_examples, resolve_data_dir
from ..train import train
from .config import QUICK_BUDGET, Budget, StudyConfig, resolve_budget
from .folder import StudyFolder
from .plot import plot_rows
from .runs import cached_output, finished_result, point_lock, run_summary, train_processes
from .summary import Row, markdown_table, summarise
from .verdicts import Verdict

MODEL_TUNING_LR = 1e-3  # T5 fine-tuning's rate; the paper's model-tuning baseline


@dataclass
class Point:
    """One run of a study: `key` names its run directory; `config` is None where nothing trains."""

    key: str
    setting: str
    model: str
    seed: int
    config: TrainConfig | None = None
    x: float | None = None  # the setting as a number, where it is one (prompt length)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """A study call resolved: its task, backbones and budget, the folder, and what is loaded once."""

    config: StudyConfig
    task: str
    models: tuple[str, ...]
    budget: Budget
    folder: StudyFolder
    progress: bool = False
    _backbones: dict[str, Backbone] = field(default_factory=dict)
    _dev: dict[str, list[Example]] = field(default_factory=dict)
    _outputs: dict[str, Path] = field(default_factory=dict)  # point key -> its run directory
    _train_sizes: dict[str, int] = field(default_factory=dict)

    def backbone(self, model: str) -> Backbone:
        """The frozen backbone `model`, loaded once per study (for counts, kinds and neighbours)."""
        if model not in self._backbones:
            self._backbones[model] = load_backbone(BackboneSpec(model, "fp32", self.config.device))
        return self._backbones[model]

    def dev_examples(self, task: Task) -> list[Example]:
        """The dev examples every run of the study is scored on (the budget's first N, or all)."""
        if task.name not in self._dev:
            data_dir = resolve_data_dir(self.config.data_dir)
            examples = task.load("validation", data_dir)[: self.budget.eval_examples]
            self._dev[task.name] = require_examples(task, "validation", data_dir, examples)
        return self._dev[task.name]

    def select_examples(self, task: Task) -> int | None:
        """The budget's held-out selection examples, at most a fifth of `task`'s training split (CB has 250, COPA 400)."""
        if self.budget.select_examples is None:
            return None
        if task.name not in self._train_sizes:
            self._train_sizes[task.name] = len(task.load("train", resolve_data_dir(self.config.data_dir)))
        return max(1, min(self.budget.select_examples, self._train_sizes[task.name] // 5))

    def train_config(self, key: str, model: str, seed: int, prompt: PromptConfig | None = None, **overrides: Any) -> TrainConfig:
        """The paper's recipe under this study's budget, for the run directory of point `key`."""
        budget = self.budget
        values: dict[str, Any] = dict(
            task=self.task, model=model, output=str(self.folder.run_dir(key)), data_dir=self.config.data_dir,
            max_steps=budget.steps, batch_size=budget.batch_size, eval_every=budget.eval_every,
            eval_examples=budget.eval_examples, checkpoint_every=max(1, min(100, budget.steps)), seed=seed,
            device=self.config.device, prompt=prompt or PromptConfig(),
        )
        values.update(overrides)
        values.setdefault("select_examples", self.select_examples(load_task(values["task"])))
        config = TrainConfig(**values)
        config = replace(config, output=str(cached_output(self.folder.root, config)))
        self._outputs[key] = Path(config.output)
        return config

    def model_tuning_config(self, key: str, model: str, seed: int) -> TrainConfig:
        """The paper's model-tuning baseline, T5's fine-tuning: every weight, no prompt, Adafactor at a constant
        lr 1e-3 with parameter scaling (each step in proportion to the weight's RMS, Mesh TensorFlow's default).

        Without the scaling, each weight moves by about 1e-3 a step; on SmolLM2 (weights of RMS ~0.02-0.14)
        a 20-step pilot scored 50.5% on the first 200 dev examples (chance) where the scaled step
        reached 64.5%.
        """
        return self.train_config(key, model, seed, PromptConfig(length=0), tune="model", lr=MODEL_TUNING_LR, parameter_scaling=True)

    def run_dir(self, key: str) -> Path:
        """Where point `key` keeps its files: its shared run directory if it trains, else ROOT/NAME/runs/KEY."""
        return self._outputs.get(key) or self.folder.run_dir(key)


def model_keys(models: tuple[str, ...]) -> dict[str, str]:
    """A short, file-name-safe, unique label per backbone, for run directory names."""
    labels: dict[str, str] = {}
    for model in models:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).exists() else model).strip("-") or "model"
        label, n = base, 2
        while label in labels.values():
            label, n = f"{base}-{n}", n + 1
        labels[model] = label
    return labels


def most_common_target(examples: list[Example], order: Sequence[str] | None = None) -> tuple[str, int, int] | None:
    """(the most common target, its count, how many examples have a target); ties go to the first in `order`."""
    targets = [e.target for e in examples if e.target]
    if not targets:
        return None
    best = max(order or sorted(set(targets)), key=targets.count)
    return best, targets.count(best), len(targets)


def majority_rate(examples: list[Example]) -> float | None:
    """The share of dev examples whose target is the most common one: the accuracy of always answering it."""
    common = most_common_target(examples)
    return common[1] / common[2] if common else None


def majority_score(task: Task, examples: list[Example]) -> float | None:
    """The primary metric of always answering the most common dev label: the chance level of a run."""
    common = most_common_target(examples, task.labels) if task.labels else None
    if common is None:
        return None
    return float(next(iter(task.metric([common[0]] * len(examples), examples).values())))


class Study:
    """The defaults and hooks one study module fills in."""

    name: ClassVar[str]
    default_task: ClassVar[str] = "sst2"
    default_models: ClassVar[tuple[str, ...]] = (T5_NANO_LM_ADAPTED,)
    quick_budget: ClassVar[Budget] = QUICK_BUDGET
    default_seeds: ClassVar[int | None] = None  # None: the budget's (3)
    x_label: ClassVar[str | None] = None  # set where settings are numbers (prompt length): the plot's x axis

    def context(self, config: StudyConfig, progress: bool = False) -> Context:
        budget = resolve_budget(config, quick=self.quick_budget)
        if config.seeds is None and self.default_seeds is not None:
            budget = replace(budget, seeds=self.default_seeds)
        return Context(config, config.task or self.default_task, config.model or self.default_models, budget,
                       StudyFolder(config.output, self.name), progress)

    def defaults(self, ctx: Context) -> dict[str, Any]:
        """The values a saved study config records for flags left out."""
        return {"task": ctx.task, "model": list(ctx.models)}

    def check(self, ctx: Context) -> None:
        """Refuse what this study cannot run, before anything is written (raises SoftpromptError)."""
        load_task(ctx.task)

    def points(self, ctx: Context) -> list[Point]:
        raise NotImplementedError

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        """Train the point (resuming its run directory) and return its record's metrics."""
        return training_record(ctx, point)

    def rows(self, records: list[dict[str, Any]]) -> list[Row]:
        """The table's rows (mean ± std per backbone and setting) from the finished points."""
        return summarise(records)

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        """The rows; where runs chose their step on held-out training examples, also dev at the last step and that score."""
        return markdown_table(rows, selection_columns(records))

    def plot(self, rows: list[Row], path: Path, title: str) -> Path:
        """plot.png: the framework's layouts (plot.py), chosen from the rows."""
        return plot_rows(rows, path, title, self.x_label)

    def sections(self, records: list[dict[str, Any]]) -> str:
        """Markdown printed below the table (neighbour tokens, parameter counts); none by default."""
        return ""

    def judge(self, records: list[dict[str, Any]], model: str) -> list[Verdict]:
        """One verdict per sub-claim of the finding, on backbone `model`'s finished points."""
        raise NotImplementedError

    def verdicts(self, records: list[dict[str, Any]]) -> list[tuple[str, Verdict]]:
        """(backbone, verdict) for each sub-claim on each backbone of the finished points."""
        return [(model, verdict) for model in dict.fromkeys(r["model"] for r in records) for verdict in self.judge(records, model)]


def selection_columns(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], str]]:
    """Extra table columns for runs with a selection split: dev at the last step, and the held-out score at the chosen step."""
    chosen = [r for r in records if r.get("score_last") is not None]
    if not chosen:
        return {}
    return {"dev at last step (%)": {(r.model, r.setting): r.cell() for r in summarise(chosen, "score_last")},
            "held-out, chosen step (%)": {(r.model, r.setting): r.cell() for r in summarise(chosen, "select_score")}}


def training_record(ctx: Context, point: Point) -> dict[str, Any]:
    """Train `point.config` (or take its finished run from the shared run directory) and describe the result.

    With a selection split, `score` is the full dev set at the step chosen on held-out training
    examples (`score_last`: at the last step; `select_score`: the chosen step's held-out score), and
    `dev_correct` says which dev examples the chosen step got right, for paired per-example tests.
    """
    config = point.config
    with point_lock(config.output):
        result = finished_result(config)
        if result is None and ctx.config.nproc_per_point > 1:
            result = train_processes(config, ctx.config.nproc_per_point)
        elif result is None:
            result = train(config, resume=True, progress=ctx.progress)
    task = load_task(config.task, config.task_spec)
    backbone = ctx.backbone(point.model)
    return {
        **run_summary(result, Path(config.output), ctx.folder.root), "chance": majority_score(task, ctx.dev_examples(task)),
        "majority_rate": majority_rate(ctx.dev_examples(task)),
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
        "tuned_parameters": tuned_parameters(config, backbone),
    }


def tuned_parameters(config: TrainConfig, backbone: Backbone) -> int:
    """Task-specific parameters: p x e for prompt tuning (the paper's count), every weight for model tuning."""
    prompt = config.prompt.length * backbone.width
    return prompt + (sum(p.numel() for p in backbone.model.parameters()) if config.tune == "model" else 0)
