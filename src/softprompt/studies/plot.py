"""`plot.png` in the paper's shape: one line per setting with seed error bars, x = model size where it applies.

Three layouts, chosen from the rows: settings that are numbers (prompt length) go on the x axis
with one line per backbone (Figure 3a's shape for one size); several backbones put their
parameter count on a log x axis with one line per setting (Figures 1 and 3); a single backbone
with named settings gets one point per setting.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_path  # noqa: E402
from .summary import Row, models_of  # noqa: E402


def _err(row: Row) -> float:
    return 0.0 if math.isnan(row.std) else 100 * row.std


def plot_rows(rows: list[Row], path: str | Path, title: str, x_label: str | None = None) -> Path:
    """Write the plot of `rows` (mean ± std over seeds, in %) to `path`, atomically."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    models = models_of(rows)
    if x_label is not None and all(row.x is not None for row in rows):
        for model in models:
            line = sorted((r for r in rows if r.model == model), key=lambda r: r.x)
            ax.errorbar([r.x for r in line], [100 * r.mean for r in line], yerr=[_err(r) for r in line], marker="o", capsize=3,
                        label=model)
        ax.set_xscale("log" if all(r.x > 0 for r in rows) else "linear")  # 0 steps of LM adaptation has no log
        ax.set_xlabel(x_label)
    elif len(models) > 1 and all(row.parameters for row in rows):
        for setting in dict.fromkeys(r.setting for r in rows):
            line = sorted((r for r in rows if r.setting == setting), key=lambda r: r.parameters)
            ax.errorbar([r.parameters for r in line], [100 * r.mean for r in line], yerr=[_err(r) for r in line], marker="o",
                        capsize=3, label=setting)
        ax.set_xscale("log")
        ax.set_xlabel("model parameters")
    else:
        for model in models:
            line = [r for r in rows if r.model == model]
            ax.errorbar(range(len(line)), [100 * r.mean for r in line], yerr=[_err(r) for r in line], marker="o", capsize=3,
                        linestyle="none", label=model)
            ax.set_xticks(range(len(line)), [r.setting for r in line], rotation=20 if len(line) > 3 else 0)
    return _finish(fig, ax, rows, path, title)


def plot_labelled_points(rows: list[Row], path: str | Path, title: str, x_label: str) -> Path:
    """One point per setting at its x (parameter count, log scale) with seed error bars, labelled in the legend."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        ax.errorbar([row.x], [100 * row.mean], yerr=[_err(row)], marker="o", capsize=3, linestyle="none",
                    label=f"{row.setting} ({row.model})" if len(models_of(rows)) > 1 else row.setting)
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    return _finish(fig, ax, rows, path, title)


def _finish(fig, ax, rows: list[Row], path: str | Path, title: str) -> Path:
    """The chance line, labels and legend; the file written atomically."""
    chances = [r.chance for r in rows if r.chance is not None]
    if chances:
        ax.axhline(100 * max(chances), color="grey", linestyle=":", label="majority class")
    ax.set_ylabel(f"{rows[0].metric if rows else 'score'} (%)")
    return save_figure(fig, ax, path, title)


def save_figure(fig, ax, path: str | Path, title: str) -> Path:
    """Title, legend and layout; the PNG written atomically (a killed study never leaves half a plot)."""
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_curves(records: list[dict], path: str | Path, title: str) -> Path | None:
    """curves.png: every run's learning curve (the selection split's metric at each evaluation), one colour per setting.

    None (and no file) when no record carries a curve (older results, or points that train nothing).
    """
    runs = [r for r in records if r.get("curve")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {s: f"C{k % 10}" for k, s in enumerate(dict.fromkeys(r["setting"] for r in runs))}
    labelled = set()
    for record in runs:
        steps, scores = zip(*record["curve"])
        setting = record["setting"]
        ax.plot(steps, [100 * s for s in scores], color=colours[setting], alpha=0.7, marker=".",
                label=None if setting in labelled else setting)
        labelled.add(setting)
    chances = [r["chance"] for r in runs if r.get("chance") is not None]
    if chances:
        ax.axhline(100 * max(chances), color="grey", linestyle=":", label="majority class (dev)")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{runs[0].get('metric', 'score')} on the selection split (%)")
    return save_figure(fig, ax, path, title)
