"""Running a study: check everything, then run each unfinished point and save its record; then table and plot.

The order is what makes a study safe to kill and rerun: all bad input (unknown study, task, a
backbone the study cannot use, a label map naming a missing label, a folder holding another study
config) is refused before anything is written; each point's record is saved only once the point
has finished; a rerun skips the points that have one and resumes the one in progress from its
run directory's checkpoint.

Scale-out: `--shard K/N` runs only every N-th training point (from the K-th), so N machines or
array jobs share one output folder; with `--steal` a shard then goes on to the others' points that
no process holds the lock of, so shards of unequal cost finish together. `--workers N` starts N
such stealing shards as local processes with one torch thread each. Points that train nothing but
read other points (the ensemble's vote, the neighbours' controls) are left to the last call without
`--shard`, which runs whatever is left and writes results.jsonl, the table and the plot.
"""

from __future__ import annotations

import multiprocessing
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import normalised
from ..errors import SoftpromptError
from ..files import write_text_atomic
from .base import Point, Study
from .config import Budget, StudyConfig, saved_form, seeds_for, shard_of
from .folder import CURVES_FILE, GIVEN, PLOT_FILE, TABLE_FILE, StudyFolder
from .plot import plot_curves
from .registry import get_study
from .runs import point_busy
from .summary import budget_line
from .verdicts import FINDINGS


@dataclass
class StudyOutcome:
    folder: Path
    ran: int  # points run by this call
    skipped: int  # points already finished
    table: Path | None  # None for a shard: the last call writes the table and plot
    plot: Path | None


def run_study(config: StudyConfig, progress: bool = False) -> StudyOutcome:
    """Run (or resume) study `config.name` under `config.output`; writes the records, results.jsonl, table.md, plot.png.

    Raises SoftpromptError for an unknown study, a task or backbone it cannot use, or an output
    folder made with a different study config, before writing anything.
    """
    study = get_study(config.name)
    ctx = study.context(config, progress)
    study.check(ctx)
    form = saved_form(config, ctx.budget, study.defaults(ctx))
    ctx.folder.check(form)
    points = fewer_seeds(study.points(ctx), seeds_for(config), study.name)
    ctx.folder.start(form)
    if config.workers > 1:
        run_workers(config)
    mine, others = points, []
    if config.shard is not None:
        k, n = shard_of(config.shard)
        training = [p for p in points if p.config is not None and p.config.max_steps > 0]
        mine = [p for i, p in enumerate(training) if i % n == k - 1]
        others = [p for i, p in enumerate(training) if i % n != k - 1] if config.steal else []
    ran = 0
    for point in [*mine, *others]:
        if point.key in ctx.folder.records():  # read again each time: another shard may have finished it meanwhile
            continue
        if config.steal and point_busy(point.config.output):  # another process is training it: leave it to that one
            continue
        started = time.perf_counter()
        metrics = study.run_point(ctx, point)
        record = {"study": study.name, "key": point.key, "setting": point.setting, "model": point.model, "seed": point.seed,
                  "x": point.x, "config": normalised(point.config) if point.config is not None else None, **metrics,
                  "point_seconds": round(time.perf_counter() - started, 1)}
        ctx.folder.save_record(record)
        ran += 1
    if config.shard is not None:
        return StudyOutcome(ctx.folder.path, ran, max(len(mine) - ran, 0), None, None)
    ctx.folder.write_results([p.key for p in points])
    table, plot = write_outputs(study, ctx.folder)
    return StudyOutcome(ctx.folder.path, ran, len(points) - ran, table, plot)


def fewer_seeds(points: list[Point], counts: dict[str, int], name: str) -> list[Point]:
    """The points less the seeds `--seeds-for` leaves out of a setting (seeds 0..N-1 stay, so they pair with the
    other settings' same seeds); a setting the study does not have is refused, before anything is written."""
    settings = dict.fromkeys(p.setting for p in points)
    unknown = [s for s in counts if s not in settings]
    if unknown:
        raise SoftpromptError(f"seeds_for: study {name} has no setting {unknown[0]!r} (--seeds-for); its settings: {', '.join(settings)}")
    return [p for p in points if p.seed < counts.get(p.setting, p.seed + 1)]


def run_workers(config: StudyConfig) -> None:
    """Run shards 1..N of the study as N local processes (one torch thread each); returns when all have finished.

    A failing shard's error is raised here (the others run to their end first), so the last pass
    does not start on a half-finished study.
    """
    n = config.workers
    shards = [replace(config, workers=1, shard=f"{k}/{n}", steal=True) for k in range(1, n + 1)]
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=one_thread) as pool:
        futures = [pool.submit(run_study, shard, False) for shard in shards]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def one_thread() -> None:
    """A worker's torch uses one intra-op thread, so N workers share N cores instead of fighting over them."""
    import torch

    torch.set_num_threads(1)


def write_outputs(study: Study, folder: StudyFolder) -> tuple[Path, Path]:
    """table.md and plot.png from results.jsonl (and nothing else)."""
    records = folder.results()
    rows = study.rows(records)
    table = folder.path / TABLE_FILE
    write_text_atomic(table, study_markdown(study, folder, records) + "\n")
    title = f"{study.name}: {folder.saved_config()['task']}"
    plot = study.plot(rows, folder.path / PLOT_FILE, title)
    plot_curves(records, folder.path / CURVES_FILE, f"{title}, learning curves")
    return table, plot


def study_markdown(study: Study, folder: StudyFolder, records: list[dict[str, Any]] | None = None, heading: str = "#",
                   where: str = "") -> str:
    """The study's table with its budget, any study-specific sections, and its verdict per backbone; `where` ends the title."""
    records = folder.results() if records is None else records
    saved = folder.saved_config()
    rows = study.rows(records)
    lines = [f"{heading} Study `{study.name}`{where}", "", budget_line(Budget(**saved["budget"]), saved["task"], saved["model"]), "",
             f"Made by: `{command_line(saved, folder.root)}` (rerun it to resume or to check). {time_line(records)}", "",
             study.table(rows, records), ""]
    extra = study.sections(records)
    if extra:
        lines += [extra, ""]
    finding = FINDINGS[study.name]
    lines += [f"Paper ({finding.source}): {finding.claim}", ""]
    for model, verdict in study.verdicts(records):
        lines.append(f"- `{model}` — {verdict.claim}: **{verdict.label}** ({verdict.reason})")
    return "\n".join(lines)


def command_line(saved: dict[str, Any], root: Path) -> str:
    """The `softprompt study` call that makes (or resumes) a study of config `saved` under `root`.

    Defaults the study filled in are written out as flags, which is the same study: its saved
    config is the same. Built-in label maps (dicts) are the default for the targets and are left out.
    """
    saved = {**saved, **{k: v for k, v in (saved.get(GIVEN) or {}).items() if v is not None}}  # paths as typed
    parts = ["softprompt", "study", saved["name"], *(["--quick"] if saved.get("quick") else [])]
    parts += [piece for model in saved.get("model") or [] for piece in ("--model", model)]
    for key in ("task", "target_task", "label_map", "lm_steps", "seeds", "max_steps", "eval_every", "eval_examples", "select_examples",
                "data_dir"):
        value = saved.get(key)
        if value is not None and not isinstance(value, dict):
            parts += [f"--{key.replace('_', '-')}", str(value)]
    if saved.get("select_examples") is None and (saved.get("budget") or {}).get("select_examples") is None:
        parts += ["--select-examples", "0"]  # chosen on dev, which is no longer the default
    parts += [piece for prompt in saved.get("prompt") or [] for piece in ("--prompt", prompt)]
    parts += [piece for spec in saved.get("seeds_for") or [] for piece in ("--seeds-for", spec)]
    return shlex.join([*parts, "--output", str(root)])


def time_line(records: list[dict[str, Any]]) -> str:
    """What the finished points cost: their wall time summed (training, scoring, loading), else their training time.

    Points resumed after an interruption count only the call that finished them.
    """
    if records and all("point_seconds" in r for r in records):
        return f"{len(records)} points, {sum(r['point_seconds'] for r in records) / 60:.1f} min of wall time summed over them."
    trained = [r["seconds"] for r in records if r.get("seconds") is not None]
    return f"{len(records)} points, {sum(trained) / 60:.1f} min of training time summed over them." if trained else ""
