"""From results.jsonl to numbers per setting: mean and standard deviation over seeds, and `table.md`.

A row is one (backbone, setting) pair; its seeds are the points that share both. The standard
deviation is the sample one (ddof 1), so a single seed has none and says so (`n = 1`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from .config import Budget
from .stats import mean_interval


@dataclass(frozen=True)
class Row:
    """One setting on one backbone, over its seeds."""

    model: str
    setting: str
    metric: str
    scores: tuple[float, ...]
    x: float | None = None
    chance: float | None = None
    parameters: int | None = None
    tuned_parameters: int | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if self.n > 1 else math.nan

    def cell(self) -> str:
        """mean ± std over seeds [95% t interval of the mean], in %; one seed has neither."""
        if self.n < 2:
            return f"{100 * self.mean:.1f}"
        _, low, high = mean_interval(self.scores)
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def summarise(records: list[dict[str, Any]], score: str = "score") -> list[Row]:
    """Rows in the order their settings first appear; `score` picks the record's number to average."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["model"], record["setting"]), []).append(record)
    rows = []
    for (model, setting), group in groups.items():
        first = group[0]
        rows.append(Row(model, setting, first.get("metric", score), tuple(float(r[score]) for r in group), first.get("x"),
                        first.get("chance"), first.get("parameters"), first.get("tuned_parameters")))
    return rows


def by_setting(rows: list[Row], model: str) -> dict[str, Row]:
    return {row.setting: row for row in rows if row.model == model}


def models_of(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(row.model for row in rows))


def budget_line(budget: Budget, task: str, models: list[str]) -> str:
    return f"Budget: task {task}; {budget.describe()}; backbone(s): {', '.join(f'`{m}`' for m in models)}."


def markdown_table(rows: list[Row], extra_columns: dict[str, dict[tuple[str, str], str]] | None = None) -> str:
    """A table of mean ± std (in %) per backbone and setting, with the seed count and chance level."""
    extra_columns = extra_columns or {}
    header = ["backbone", "setting", "metric", "mean ± std [95% CI] (%)", "seeds", "chance (%)", *extra_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        chance = f"{100 * row.chance:.1f}" if row.chance is not None else "n/a"
        extra = [column.get((row.model, row.setting), "") for column in extra_columns.values()]
        lines.append("| " + " | ".join([f"`{row.model}`", row.setting, row.metric, row.cell(), str(row.n), chance, *extra]) + " |")
    return "\n".join(lines)
