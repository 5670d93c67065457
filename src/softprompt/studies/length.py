"""`length`: prompt length p in {1, 5, 20, 100, 150} on each backbone (the paper's Figure 3a)."""

from __future__ import annotations

from ..config import PromptConfig
from .base import Context, Point, Study, model_keys
from .summary import Row, by_setting
from .verdicts import FINDINGS, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Verdict, exceeds, untestable

LENGTHS = (1, 5, 20, 100, 150)


class LengthStudy(Study):
    """Class-label init (the paper's default) at each length; everything else the recipe's."""

    name = "length"
    finding = FINDINGS["length"]
    x_label = "prompt length p (tokens)"

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):  # seed-major: an interrupted study already has one seed of every setting
            for model in ctx.models:
                for p in LENGTHS:
                    key = f"{keys[model]}/p{p}/seed{seed}"
                    points.append(Point(key, f"p={p}", model, seed, ctx.train_config(key, model, seed, PromptConfig(length=p)), x=p))
        return points

    def verdict(self, rows: list[Row], model: str) -> Verdict:
        """Two claims: some p >= 5 beats p = 1 beyond the spread; p = 100 / 150 gain no more than the spread over p = 20."""
        settings = by_setting(rows, model)
        missing = [f"p={p}" for p in LENGTHS if f"p={p}" not in settings]
        if missing:
            return Verdict(NOT_TESTABLE, f"{', '.join(missing)} not run")
        blocked = untestable(list(settings.values()))
        if blocked:
            return blocked
        one, twenty = settings["p=1"], settings["p=20"]
        longer = max((settings[f"p={p}"] for p in (5, 20, 100, 150)), key=lambda r: r.mean)
        past = max((settings["p=100"], settings["p=150"]), key=lambda r: r.mean)
        more_matters = exceeds(longer.mean, longer.std, one.mean, one.std)
        marginal = not exceeds(past.mean, past.std, twenty.mean, twenty.std)
        reason = (f"best p >= 5 ({longer.setting}) {100 * longer.mean:.1f} vs p=1 {100 * one.mean:.1f}: "
                  f"{'beyond' if more_matters else 'within'} the spread; best past 20 ({past.setting}) {100 * past.mean:.1f} vs "
                  f"p=20 {100 * twenty.mean:.1f}: {'marginal' if marginal else 'a real gain'}")
        return Verdict(REPRODUCED if more_matters and marginal else NOT_REPRODUCED, reason)
