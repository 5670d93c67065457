"""`objective`: which pretraining makes a T5 promptable: span corruption, + sentinel targets, LM adaptation (§3.3).

Two checkpoints of one T5 (`--model SPAN_CORRUPTION --model LM_ADAPTED`, by default the packaged
nano pair) and three settings: the span-corruption model with plain targets, the same model with
every target prefixed by a sentinel (so it looks like a pretraining output), and the LM-adapted
model. Dev scores come from rank classification and generation both: span corruption's failure in
the paper is emitting illegal labels, which only generation shows (`invalid` outputs).
Decoder-only backbones have no span-corruption objective and are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..backbones.loading import T5_NANO_LM_ADAPTED, T5_NANO_SPAN_CORRUPTION
from ..errors import SoftpromptError
from .base import Context, Point, Study, training_record
from .config import QUICK_BUDGET
from .summary import Row, markdown_table, summarise
from .verdicts import FINDINGS, NOT_REPRODUCED, REPRODUCED, Verdict, exceeds, untestable

SPAN, SENTINEL, LM = "span corruption", "span corruption + sentinel", "LM adaptation"


class ObjectiveStudy(Study):
    name = "objective"
    finding = FINDINGS["objective"]
    quick_budget = replace(QUICK_BUDGET, steps=300, eval_every=150)  # 9 runs at p = 100, each evaluation also generating
    default_models = (T5_NANO_SPAN_CORRUPTION, T5_NANO_LM_ADAPTED)

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        if len(ctx.models) != 2:
            raise SoftpromptError(f"study objective takes two --model: the span-corruption checkpoint, then the LM-adapted one "
                                  f"({len(ctx.models)} given)")
        for model in ctx.models:
            backbone = ctx.backbone(model)
            if backbone.kind != "encoder-decoder":
                raise SoftpromptError(f"study objective compares T5 pretraining objectives; {model} is a {backbone.kind} "
                                      "backbone (give encoder-decoder checkpoints)")

    def family(self, ctx: Context) -> str:
        return " → ".join(ctx.models)

    def points(self, ctx: Context) -> list[Point]:
        span_model, lm_model = ctx.models
        points = []
        for seed in range(ctx.budget.seeds):
            for setting, model, target_format, key in ((SPAN, span_model, "plain", "span"), (SENTINEL, span_model, "sentinel", "sentinel"),
                                                       (LM, lm_model, "plain", "lm-adapted")):
                key = f"{key}/seed{seed}"
                config = ctx.train_config(key, model, seed, target_format=target_format, eval_method="both")
                points.append(Point(key, setting, model, seed, config, extra={"family": self.family(ctx)}))
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

    def verdict(self, rows: list[Row], model: str) -> Verdict:
        """Reproduced when LM adaptation beats span corruption (plain) beyond the seeds' spread."""
        settings = {r.setting: r for r in rows if r.model == model}
        blocked = untestable(list(settings.values()))
        if blocked:
            return blocked
        lm, span = settings[LM], settings[SPAN]
        holds = exceeds(lm.mean, lm.std, span.mean, span.std)
        sentinel = settings[SENTINEL]
        return Verdict(REPRODUCED if holds else NOT_REPRODUCED,
                       f"LM adaptation {lm.cell()} vs span corruption {span.cell()} (+ sentinel {sentinel.cell()})")
