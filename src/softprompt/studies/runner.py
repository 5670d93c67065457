"""Running a study: check everything, then run each unfinished point and append its line; then table and plot.

The order is what makes a study safe to kill and rerun: all bad input (unknown study, task, a
backbone the study cannot use, a label map naming a missing label, a folder holding another study
config) is refused before anything is written; each point's line is appended only once the point
has finished; a rerun skips the points whose line is present and resumes the one in progress from
its run directory's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import normalised
from ..files import write_text_atomic
from .base import Study
from .config import Budget, StudyConfig, saved_form
from .folder import PLOT_FILE, TABLE_FILE, StudyFolder
from .registry import get_study
from .summary import budget_line
from .verdicts import FINDINGS


@dataclass
class StudyOutcome:
    folder: Path
    ran: int  # points run by this call
    skipped: int  # points already finished
    table: Path
    plot: Path


def run_study(config: StudyConfig, progress: bool = False) -> StudyOutcome:
    """Run (or resume) study `config.name` under `config.output`; writes results.jsonl, table.md, plot.png.

    Raises SoftpromptError for an unknown study, a task or backbone it cannot use, or an output
    folder made with a different study config, before writing anything.
    """
    study = get_study(config.name)
    ctx = study.context(config, progress)
    study.check(ctx)
    form = saved_form(config, ctx.budget, study.defaults(ctx))
    ctx.folder.check(form)
    points = study.points(ctx)
    ctx.folder.start(form)
    done = {record["key"]: record for record in ctx.folder.results()}
    ran = 0
    for point in points:
        if point.key in done:
            continue
        metrics = study.run_point(ctx, point)
        record = {"study": study.name, "key": point.key, "setting": point.setting, "model": point.model, "seed": point.seed,
                  "x": point.x, "config": normalised(point.config) if point.config is not None else None, **metrics}
        ctx.folder.append(record)
        done[point.key] = record
        ran += 1
    table, plot = write_outputs(study, ctx.folder)
    return StudyOutcome(ctx.folder.path, ran, len(points) - ran, table, plot)


def write_outputs(study: Study, folder: StudyFolder) -> tuple[Path, Path]:
    """table.md and plot.png from results.jsonl (and nothing else)."""
    records = folder.results()
    rows = study.rows(records)
    table = folder.path / TABLE_FILE
    write_text_atomic(table, study_markdown(study, folder, records) + "\n")
    plot = study.plot(rows, folder.path / PLOT_FILE, f"{study.name}: {folder.saved_config()['task']}")
    return table, plot


def study_markdown(study: Study, folder: StudyFolder, records: list[dict[str, Any]] | None = None, heading: str = "#",
                   where: str = "") -> str:
    """The study's table with its budget, any study-specific sections, and its verdict per backbone; `where` ends the title."""
    records = folder.results() if records is None else records
    saved = folder.saved_config()
    rows = study.rows(records)
    lines = [f"{heading} Study `{study.name}`{where}", "", budget_line(Budget(**saved["budget"]), saved["task"], saved["model"]), "",
             study.table(rows, records), ""]
    extra = study.sections(records)
    if extra:
        lines += [extra, ""]
    finding = FINDINGS[study.name]
    lines += [f"Paper ({finding.source}): {finding.claim}", ""]
    for model, verdict in study.verdicts(records):
        lines.append(f"- `{model}`: **{verdict.label}** ({verdict.reason})")
    return "\n".join(lines)
