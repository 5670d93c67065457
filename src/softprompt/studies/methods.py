"""`methods`: prompt tuning against prefix tuning, P-tuning, LoRA, IA³ (through PEFT) and model tuning (Figure 4).

One backbone, one task, the same budget (steps, batch, dev examples) for every method. Prompt
tuning and model tuning are softprompt's own `train()` (Adafactor, the paper's recipe; model
tuning with no prompt by T5's fine-tuning recipe, `Context.model_tuning_config`); the PEFT methods train with AdamW
(peft_runs.py). Each point records its dev score (rank classification), the training loop's wall
time, its peak memory and its task-specific parameters: trained, and kept for inference (P-tuning
folds its prompt encoder into its virtual tokens). The virtual-token methods use the prompt
tuning length p (100, the paper's default).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import PromptConfig, TrainConfig
from ..device import pick_device
from ..errors import SoftpromptError
from ..optim import learning_rate
from ..tasks import load_task
from .base import Context, Point, Study, majority_score, model_keys, training_record
from .config import QUICK_BUDGET
from .plot import plot_labelled_points
from .summary import Row, by_setting, markdown_table, summarise
from .transfer import MODEL_TUNING, PROMPT_TUNING
from .verdicts import CONTRADICTED, SUPPORTED, Claim, Verdict, judged, not_testable

SETTINGS = (PROMPT_TUNING, "prefix tuning", "P-tuning", "LoRA", "IA³", MODEL_TUNING)  # the table's order
FIGURE_4 = ("prefix tuning", "P-tuning", MODEL_TUNING)  # of the methods run here, those the paper's Figure 4 shows
FEWEST = "prompt tuning trains fewer task-specific parameters than the methods of Figure 4 (prefix tuning, P-tuning, model tuning)"
GAP = Claim("below XXL, model tuning > prompt tuning (Figure 1's gap at this size)", MODEL_TUNING, PROMPT_TUNING)


# Before 2026-12-02 the CPU measure skipped gc and malloc_trim: a point reused the heap pages its predecessors
# had freed (glibc keeps them resident), so only a process's first point was measured. Such records are not shown.
UNTRIMMED_RSS = "peak RSS growth (VmHWM)"


def release_freed_memory() -> None:
    """Collect garbage and hand glibc's freed heap pages back to the OS, so RSS is what is in use (no-op elsewhere)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        pass


class PeakMemory:
    """Peak memory growth over a block: CUDA's max allocated bytes, else the process's peak RSS (VmHWM, reset first).

    On the CPU, freed memory is released first (`release_freed_memory`): otherwise a point run after
    another in the same process would fill the pages its predecessor freed and seem to need none.
    """

    def __init__(self, device: torch.device):
        self.device, self.mb, self.how = device, None, ""

    @staticmethod
    def _status(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base, self.how = torch.cuda.memory_allocated(self.device), "CUDA max_memory_allocated growth"
            return self
        release_freed_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
            self.base, self.how = self._status("VmRSS"), "peak RSS growth (VmHWM, after gc and malloc_trim)"
        except (OSError, AttributeError):
            self.how = ""  # no /proc: not measured
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.how:
            peak = self._status("VmHWM")
        else:
            return
        self.mb = round(max(0, peak - self.base) / 2**20, 1)


class MethodsStudy(Study):
    name = "methods"
    # Measured on the packaged T5, SST-2, 2 shared cores (`--quick --seeds 1 --max-steps 40`): 139 s for all six methods,
    # of which 60 s in the training loops (one 200-example evaluation each) and the rest loading and tokenising; so
    # 300 steps with 2 evaluations x 6 methods x 3 seeds is an estimated 18 minutes.
    quick_budget = replace(QUICK_BUDGET, steps=300, eval_every=150)
    x_label = "task-specific parameters (log scale)"

    def check(self, ctx: Context) -> None:
        from .peft_runs import PEFT_METHODS, check_backbone

        task = load_task(ctx.task)
        if not task.labels:
            raise SoftpromptError(f"study methods scores by rank classification over labels; task {ctx.task} has none")
        if len(ctx.models) != 1:
            raise SoftpromptError(f"study methods compares methods on one backbone; got {len(ctx.models)} --model")
        check_backbone(ctx.backbone(ctx.models[0]), PEFT_METHODS, PromptConfig().length)

    def points(self, ctx: Context) -> list[Point]:
        from .peft_runs import PEFT_METHODS, PeftRun

        model = ctx.models[0]
        label, defaults, points = model_keys(ctx.models)[model], TrainConfig(), []
        for seed in range(ctx.budget.seeds):
            key = f"{label}/prompt/seed{seed}"
            points.append(Point(key, PROMPT_TUNING, model, seed, ctx.train_config(key, model, seed)))
            for method in PEFT_METHODS:
                key = f"{label}/{method.key}/seed{seed}"
                run = PeftRun(method, model, ctx.task, ctx.folder.run_dir(key), ctx.budget.steps, ctx.budget.batch_size,
                              ctx.budget.eval_every, seed, PromptConfig().length, ctx.config.device, ctx.config.data_dir,
                              defaults.max_input_length, defaults.max_target_length, defaults.eval_batch_size,
                              ctx.select_examples(load_task(ctx.task)))
                points.append(Point(key, method.name, model, seed, extra={"run": run}))
            key = f"{label}/model/seed{seed}"
            points.append(Point(key, MODEL_TUNING, model, seed, ctx.model_tuning_config(key, model, seed)))
        return points

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        """Train one point and record its score, counts and peak memory (not measured when the point ran as several processes)."""
        from .peft_runs import peft_processes, train_peft

        task, nproc = load_task(ctx.task), ctx.config.nproc_per_point
        backbone, dev = ctx.backbone(point.model), ctx.dev_examples(task)  # loaded before memory is measured
        with PeakMemory(pick_device(ctx.config.device)) as memory:
            if point.config is not None:
                record = training_record(ctx, point)
                record.update(optimizer="Adafactor", lr=learning_rate(point.config, backbone),
                              stored_parameters=record["tuned_parameters"])
            elif nproc > 1:
                record = peft_processes(point.extra["run"], ctx.budget.eval_examples, nproc)
            else:
                record = train_peft(point.extra["run"], dev)
            if point.config is None:
                record.update(optimizer="AdamW", lr=record["peft"]["lr"], chance=majority_score(task, dev))
        if nproc > 1:  # this process only waited for the job: its growth is not the point's
            memory.mb, memory.how = None, f"not measured ({nproc}-process point)"
        return {**record, "x": record["tuned_parameters"], "peak_memory_mb": memory.mb, "memory_measure": memory.how}

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        first = {(r["model"], r["setting"]): r for r in reversed(records)}
        seconds = {(r.model, r.setting): f"{r.mean:.1f}" for r in summarise(records, "seconds")}
        measured = [r for r in records if r.get("peak_memory_mb") is not None and r.get("memory_measure") != UNTRIMMED_RSS]
        memory = {(r.model, r.setting): f"{r.mean:.0f}" for r in summarise(measured, "peak_memory_mb")}
        return markdown_table(rows, {
            "task-specific parameters": {k: f"{r['tuned_parameters']:,} ({percent(r)})" for k, r in first.items()},
            "optimizer (lr)": {k: f"{r['optimizer']} ({r['lr']:.3g})" for k, r in first.items()},
            "train s (mean)": seconds, "peak memory MiB (mean)": memory})

    def sections(self, records: list[dict[str, Any]]) -> str:
        """The paper's Figure 4 as a table: task-specific parameters per method, fewest first."""
        first = {(r["model"], r["setting"]): r for r in reversed(records)}
        lines = ["Task-specific parameters (the paper's Figure 4), fewest first:", "",
                 "| backbone | method | trained | % of backbone | kept for inference |", "|---|---|---|---|---|"]
        for (model, setting), r in sorted(first.items(), key=lambda item: (item[0][0], item[1]["tuned_parameters"])):
            lines.append(f"| `{model}` | {setting} | {r['tuned_parameters']:,} | {percent(r)} | {r['stored_parameters']:,} |")
        measures = sorted({"not shown (an untrimmed RSS measure, see methods.py)" if r.get("memory_measure") == UNTRIMMED_RSS
                           else r.get("memory_measure") or "not measured" for r in records})
        lines += ["", f"Seconds: the training loop with its dev evaluations (loading excluded). Peak memory: {', '.join(measures)}, "
                      "loading the run's own backbone copy included."]
        return "\n".join(lines)

    def plot(self, rows: list[Row], path: Path, title: str) -> Path:
        return plot_labelled_points(rows, path, title, self.x_label)

    def judge(self, records: list[dict[str, Any]], model: str) -> list[Verdict]:
        """Figure 4's parameter counts (LoRA and IA³, later than the paper, are reported, not judged) and the accuracy gap."""
        return [parameter_verdict(self.rows(records), model), *judged(records, model, [GAP])]


def percent(record: dict[str, Any]) -> str:
    return f"{100 * record['tuned_parameters'] / record['parameters']:.3g}%"


def parameter_verdict(rows: list[Row], model: str) -> Verdict:
    """Supported when prompt tuning trains fewer task-specific parameters than each Figure 4 method run (counts: no seeds)."""
    settings = by_setting(rows, model)
    missing = [s for s in (PROMPT_TUNING, *FIGURE_4) if s not in settings]
    if missing:
        return not_testable(FEWEST, f"{', '.join(missing)} not run")
    prompt = settings[PROMPT_TUNING].tuned_parameters
    fewer = [s for s in FIGURE_4 if settings[s].tuned_parameters <= prompt]
    counts = "; ".join(f"{s} {settings[s].tuned_parameters:,}" for s in SETTINGS if s in settings)
    if fewer:
        return Verdict(CONTRADICTED, f"{', '.join(fewer)} train no more than prompt tuning ({counts})", FEWEST)
    return Verdict(SUPPORTED, f"exact counts: {counts}", FEWEST)
