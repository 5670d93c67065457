"""`init`: random-uniform vs sampled-vocab vs class-label initialisation on each backbone (the paper's Figure 3b)."""

from __future__ import annotations

from ..config import PromptConfig
from .base import Context, Point, Study, model_keys
from .verdicts import Claim, Verdict, judged, one_size

INITS = ("random-uniform", "sampled-vocab", "class-label")  # worst to best, as the paper finds
CLAIMS = [Claim("class label > sampled vocab", "class-label", "sampled-vocab"),
          Claim("sampled vocab > random uniform", "sampled-vocab", "random-uniform"),
          Claim("class label > random uniform", "class-label", "random-uniform")]


class InitStudy(Study):
    """The three initialisations at the paper's default length p = 100."""

    name = "init"

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                for init in INITS:
                    key = f"{keys[model]}/{init}/seed{seed}"
                    points.append(Point(key, init, model, seed, ctx.train_config(key, model, seed, PromptConfig(init=init))))
        return points

    def judge(self, records: list[dict], model: str) -> list[Verdict]:
        """The ordering as three paired contrasts (Holm across them); its scale half needs several sizes."""
        return [*judged(records, model, CLAIMS), one_size("the gap is largest for small models and gone at XXL")]
