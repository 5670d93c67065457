"""`init`: random-uniform vs sampled-vocab vs class-label initialisation on each backbone (the paper's Figure 3b)."""

from __future__ import annotations

from ..config import PromptConfig
from .base import Context, Point, Study, model_keys
from .summary import Row, by_setting
from .verdicts import FINDINGS, NOT_TESTABLE, Verdict, ordering, untestable

INITS = ("random-uniform", "sampled-vocab", "class-label")  # worst to best, as the paper finds


class InitStudy(Study):
    """The three initialisations at the paper's default length p = 100."""

    name = "init"
    finding = FINDINGS["init"]

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                for init in INITS:
                    key = f"{keys[model]}/{init}/seed{seed}"
                    points.append(Point(key, init, model, seed, ctx.train_config(key, model, seed, PromptConfig(init=init))))
        return points

    def verdict(self, rows: list[Row], model: str) -> Verdict:
        settings = by_setting(rows, model)
        if any(init not in settings for init in INITS):
            return Verdict(NOT_TESTABLE, "not every initialisation was run")
        claimed = list(reversed(INITS))  # class-label > sampled-vocab > random-uniform
        return untestable([settings[i] for i in claimed]) or ordering([settings[i] for i in claimed], claimed)
