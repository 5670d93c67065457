"""`transfer`: zero-shot, a prompt (or a tuned model) trained on one task scored on another through a label map.

The paper's Tables 1-2 ask whether prompt tuning transfers better than model tuning; here one
source task (default RTE) is trained both ways and each result is scored on the target task
(default CB for RTE, QQP for MRPC) in the source's label space (tasks/transfer.py). The label map
is checked against both tasks before anything trains. Model tuning trains every weight with no
prompt, at T5 fine-tuning's lr 1e-3 (`--tune model --lr 1e-3 --prompt-length 0`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..config import PromptConfig
from ..errors import SoftpromptError
from ..evaluate import evaluate
from ..model import load_prompted_model
from ..tasks import check_label_map, label_map_for, load_task, mapped_task, parse_label_map
from .base import Context, Point, Study, majority_score, model_keys, training_record
from .config import QUICK_BUDGET
from .summary import Row, markdown_table, summarise
from .verdicts import FINDINGS, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Verdict, exceeds, untestable

DEFAULT_TARGETS = {"rte": "cb", "mrpc": "qqp", "qqp": "mrpc"}
PROMPT_TUNING, MODEL_TUNING = "prompt tuning", "model tuning"
MODEL_TUNING_LR = 1e-3  # T5 fine-tuning's rate; the paper's model-tuning baseline


class TransferStudy(Study):
    name = "transfer"
    finding = FINDINGS["transfer"]
    quick_budget = replace(QUICK_BUDGET, steps=300, eval_every=150)  # 6 runs on RTE's longer inputs, 3 of them tuning every weight
    default_task = "rte"

    def target_name(self, ctx: Context) -> str:
        if ctx.config.target_task:
            return ctx.config.target_task
        if ctx.task not in DEFAULT_TARGETS:
            raise SoftpromptError(f"study transfer has no default target for task {ctx.task}; pass --target-task")
        return DEFAULT_TARGETS[ctx.task]

    def mapping(self, ctx: Context) -> dict[str, str]:
        """The label map target label -> source label, checked against both tasks (raises SoftpromptError)."""
        source, target = load_task(ctx.task), load_task(self.target_name(ctx))
        if not source.labels:
            raise SoftpromptError(f"study transfer maps labels; source task {source.name} has none")
        mapping = parse_label_map(ctx.config.label_map) if ctx.config.label_map else label_map_for(source.name, target)
        if mapping is None:
            raise SoftpromptError(f"no built-in label map from {source.name} to {target.name}; pass --label-map TARGET_LABEL=SOURCE_LABEL,...")
        check_label_map(target, mapping, source.labels)
        return mapping

    def check(self, ctx: Context) -> None:
        self.mapping(ctx)

    def defaults(self, ctx: Context) -> dict[str, Any]:
        return {**super().defaults(ctx), "target_task": self.target_name(ctx), "label_map": self.mapping(ctx)}

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                key = f"{keys[model]}/prompt/seed{seed}"
                points.append(Point(key, PROMPT_TUNING, model, seed, ctx.train_config(key, model, seed)))
                key = f"{keys[model]}/model/seed{seed}"
                points.append(Point(key, MODEL_TUNING, model, seed, ctx.train_config(
                    key, model, seed, PromptConfig(length=0), tune="model", lr=MODEL_TUNING_LR)))
        return points

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        """Train on the source task, then score the best checkpoint zero-shot on the target's dev examples."""
        record = training_record(ctx, point)
        source = load_task(ctx.task)
        target = mapped_task(load_task(self.target_name(ctx)), self.mapping(ctx), source.labels)
        examples = ctx.dev_examples(target)
        model = load_prompted_model([f"{ctx.task}={ctx.folder.run_dir(point.key)}"], device=ctx.config.device).eval()
        metrics = evaluate(model, target, examples, ctx.task, "rank")
        metric = next(iter(metrics))
        return {**record, "source_task": ctx.task, "source_metric": record["metric"], "source_score": record["score"],
                "source_chance": record["chance"], "target_task": target.name, "target_metrics": metrics,
                "metric": metric, "score": metrics[metric], "chance": majority_score(target, examples)}

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        source = {(r.model, r.setting): f"{r.cell()} ({r.metric})" for r in summarise(records, "source_score")}
        return markdown_table(rows, {"source dev, in domain (%)": source})

    def verdict(self, rows: list[Row], model: str) -> Verdict:
        """Reproduced when prompt tuning's zero-shot score beats model tuning's beyond the seeds' spread."""
        settings = {r.setting: r for r in rows if r.model == model}
        if PROMPT_TUNING not in settings or MODEL_TUNING not in settings:
            return Verdict(NOT_TESTABLE, "both prompt and model tuning are needed")
        prompt, tuned = settings[PROMPT_TUNING], settings[MODEL_TUNING]
        blocked = untestable([prompt, tuned])
        if blocked:
            return blocked
        holds = exceeds(prompt.mean, prompt.std, tuned.mean, tuned.std)
        return Verdict(REPRODUCED if holds else NOT_REPRODUCED,
                       f"zero-shot {prompt.metric}: prompt tuning {prompt.cell()} vs model tuning {tuned.cell()}")
