"""`length`: prompt length p in {1, 5, 20, 100, 150} on each backbone (the paper's Figure 3a)."""

from __future__ import annotations

from ..config import PromptConfig
from .base import Context, Point, Study, model_keys
from .verdicts import EQUAL, Claim, Verdict, judged, one_size

LENGTHS = (1, 5, 20, 100, 150)
MORE_THAN_ONE = "more than one token matters a lot (for all but the largest model)"
MARGINAL = "past 20 tokens the gains are marginal"
CLAIMS = [*(Claim(f"{MORE_THAN_ONE}: p={p} > p=1", f"p={p}", "p=1") for p in (5, 20, 100)),
          *(Claim(f"{MARGINAL}: p={p} ≈ p=20 (±2 points)", f"p={p}", "p=20", EQUAL) for p in (100, 150))]


class LengthStudy(Study):
    """Class-label init (the paper's default) at each length; everything else the recipe's."""

    name = "length"
    x_label = "prompt length p (tokens)"

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):  # seed-major: an interrupted study already has one seed of every setting
            for model in ctx.models:
                for p in LENGTHS:
                    key = f"{keys[model]}/p{p}/seed{seed}"
                    points.append(Point(key, f"p={p}", model, seed, ctx.train_config(key, model, seed, PromptConfig(length=p)), x=p))
        return points

    def judge(self, records: list[dict], model: str) -> list[Verdict]:
        """p = 5, 20, 100 each against p = 1 (Holm across the three); p = 100 and 150 about equal to p = 20."""
        return [*judged(records, model, CLAIMS), one_size("past 100 tokens slightly worse for large models")]
