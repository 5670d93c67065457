"""`objective`: which pretraining makes a T5 promptable: span corruption, + sentinel targets, LM adaptation (§3.3).

Two checkpoints of one T5 (`--model SPAN_CORRUPTION --model LM_ADAPTED`, by default the packaged
nano pair) and three settings: the span-corruption model with plain targets, the same model with
every target prefixed by a sentinel (so it looks like a pretraining output), and the LM-adapted
model. Dev scores come from rank classification and generation both: span corruption's failure in
the paper is emitting illegal labels, which only generation shows (`invalid` outputs).
Decoder-only backbones have no span-corruption objective and are refused.

`--lm-steps RUN` asks Figure 3(d)'s question instead, how much LM adaptation: RUN is a
`softprompt pretrain lm-adapt` folder made with `--snapshot-every N`; its starting checkpoint
(0 steps, when still there), each kept snapshot and its final model are prompt-tuned alike, x =
LM-adaptation steps.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backbones.loading import T5_NANO_LM_ADAPTED, T5_NANO_SPAN_CORRUPTION
from ..errors import SoftpromptError
from ..pretrain.checkpoint import is_checkpoint, read_snapshots, read_summary
from .base import Context, Point, Study, training_record
from .config import QUICK_BUDGET, StudyConfig
from .plot import plot_rows
from .summary import Row, markdown_table, summarise
from .verdicts import EQUAL, Claim, Verdict, judged, one_size

SPAN, SENTINEL, LM = "span corruption", "span corruption + sentinel", "LM adaptation"
STEPS_AXIS = "LM-adaptation steps"


def lm_series(run: str) -> list[tuple[int, str]]:
    """(LM-adaptation steps, checkpoint) of a finished lm-adapt run: its start (if present), snapshots, final model.

    Raises SoftpromptError for a folder that is not a finished lm-adapt run, or one with nothing kept along the way.
    """
    summary = read_summary(run) if Path(run).is_dir() else None
    if summary is None or summary.get("objective") != "lm-adapt" or not summary.get("complete"):
        raise SoftpromptError(f"--lm-steps {run}: not a finished `softprompt pretrain lm-adapt` run folder "
                              "(pretrain_summary.json with objective lm-adapt and complete: true expected)")
    series = [(step, str(path)) for step, path in read_snapshots(run) if step < summary["steps"]]
    if not series:
        raise SoftpromptError(f"--lm-steps {run}: no snapshots beside it (in {run}-snapshots); pretrain with --snapshot-every N")
    start = summary.get("init_from")
    if start and is_checkpoint(start):
        series.insert(0, (0, start))
    return [*series, (summary["steps"], str(run))]


class ObjectiveStudy(Study):
    name = "objective"
    quick_budget = replace(QUICK_BUDGET, steps=300, eval_every=150)  # 9 runs at p = 100, each evaluation also generating
    default_models = (T5_NANO_SPAN_CORRUPTION, T5_NANO_LM_ADAPTED)

    def context(self, config: StudyConfig, progress: bool = False) -> Context:
        ctx = super().context(config, progress)
        if config.lm_steps:
            if config.model:
                raise SoftpromptError("study objective: give --lm-steps RUN or two --model, not both")
            ctx.models = tuple(path for _, path in lm_series(config.lm_steps))
        return ctx

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        if not ctx.config.lm_steps and len(ctx.models) != 2:
            raise SoftpromptError(f"study objective takes two --model: the span-corruption checkpoint, then the LM-adapted one "
                                  f"({len(ctx.models)} given)")
        for model in ctx.models:
            backbone = ctx.backbone(model)
            if backbone.kind != "encoder-decoder":
                raise SoftpromptError(f"study objective compares T5 pretraining objectives; {model} is a {backbone.kind} "
                                      "backbone (give encoder-decoder checkpoints)")

    def family(self, ctx: Context) -> str:
        return ctx.config.lm_steps or " → ".join(ctx.models)

    def points(self, ctx: Context) -> list[Point]:
        if ctx.config.lm_steps:
            return self.step_points(ctx)
        span_model, lm_model = ctx.models
        points = []
        for seed in range(ctx.budget.seeds):
            for setting, model, target_format, key in ((SPAN, span_model, "plain", "span"), (SENTINEL, span_model, "sentinel", "sentinel"),
                                                       (LM, lm_model, "plain", "lm-adapted")):
                key = f"{key}/seed{seed}"
                config = ctx.train_config(key, model, seed, target_format=target_format, eval_method="both")
                points.append(Point(key, setting, model, seed, config, extra={"family": self.family(ctx)}))
        return points

    def step_points(self, ctx: Context) -> list[Point]:
        """One prompt-tuning run per kept checkpoint of the --lm-steps run and seed, x = its LM-adaptation steps."""
        points = []
        for seed in range(ctx.budget.seeds):
            for steps, model in lm_series(ctx.config.lm_steps):
                key = f"lm-{steps}/seed{seed}"
                config = ctx.train_config(key, model, seed, eval_method="both")
                points.append(Point(key, f"{LM}, {steps} steps", model, seed, config, x=steps, extra={"family": self.family(ctx)}))
        return points

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        record = training_record(ctx, point)
        return {**record, "family": point.extra["family"], "invalid": record["metrics"].get("generate_invalid"),
                "generate_score": record["metrics"].get("generate_accuracy", record["metrics"].get("generate_f1_macro"))}

    def rows(self, records: list[dict[str, Any]]) -> list[Row]:
        """One backbone family: the settings differ in checkpoint as well as target format."""
        return summarise([{**r, "model": r["family"]} for r in records])

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        family = [{**r, "model": r["family"]} for r in records]
        generated = {(r.model, r.setting): r.cell() for r in summarise([r for r in family if r.get("generate_score") is not None], "generate_score")}
        invalid = {(r.model, r.setting): f"{r.mean:.1f}" for r in summarise([r for r in family if r.get("invalid") is not None], "invalid")}
        return markdown_table(rows, {"generation (%)": generated, "illegal outputs (mean count)": invalid})

    def plot(self, rows: list[Row], path: Path, title: str) -> Path:
        return plot_rows(rows, path, title, STEPS_AXIS if all(r.x is not None for r in rows) else None)

    def sections(self, records: list[dict[str, Any]]) -> str:
        """Where the two packaged checkpoints were compared at a budget past chance, when this study compared them."""
        if not any(T5_NANO_LM_ADAPTED in r["model"] for r in records):
            return ""
        return ("Longer runs of the same two packaged checkpoints (SST-2, about 4,500 steps at batch 32, one run per seed, "
                "chosen on dev, no test) are in the model card of `packaged:t5-nano-lm-adapted` "
                "(`src/softprompt/packaged/t5-nano-lm-adapted/README.md`, \"Prompt tuning on this backbone\"); "
                "they are not a verdict of this study.")

    def verdicts(self, records: list[dict[str, Any]]) -> list[tuple[str, Verdict]]:
        """Judged per backbone family: its settings differ in checkpoint as well as in target format."""
        return super().verdicts([{**r, "model": r["family"]} for r in records])

    def judge(self, records: list[dict[str, Any]], model: str) -> list[Verdict]:
        """LM adaptation vs span corruption, sentinels about equal (±2 points); with --lm-steps, the longest
        adaptation vs the shortest. The sizes half ("XXL is robust to all choices") needs several sizes."""
        mine = [r for r in records if r["model"] == model]
        steps = sorted({r["x"] for r in mine if r.get("x") is not None})
        if steps and len(steps) == len({r["setting"] for r in mine}):
            by_x = {r["x"]: r["setting"] for r in mine}
            claims = [Claim(f"longer LM adaptation helps: {steps[-1]:g} > {steps[0]:g} steps", by_x[steps[-1]], by_x[steps[0]])]
        else:
            claims = [Claim("LM adaptation > span corruption", LM, SPAN),
                      Claim("adding sentinels helps little: span corruption + sentinel ≈ span corruption (±2 points)",
                            SENTINEL, SPAN, EQUAL)]
        return [*judged(records, model, claims), one_size("XXL is robust to all choices")]
