"""Multi-process prompt tuning: examples/s of `softprompt train` on 1, 2, ... processes, through the real command line.

Why: data-parallel training (`torchrun ... -m softprompt train`) shards every global batch over the
ranks and sums the prompt's gradients; whether that pays depends on how much of a step the ranks
can share and how much the launcher, the gradient reduction and the per-rank work cost. This runs
the very command a user runs, in a subprocess, so everything is counted: the launcher, the process
group, the collectives, and the threads the processes share.

For each process count N in --nproc, one row per configuration:
- `plain-1`: `python -m softprompt train ...` (only for N = 1), the baseline;
- `torchrun-N`: `python -m torch.distributed.run --standalone --nproc-per-node N -m softprompt train ...`
  (for N = 1 too: its gap to `plain-1` is the launcher's own cost).
Each process gets OMP_NUM_THREADS = --threads (default: cpu_count // N, at least 1), so N processes
share the machine's cores instead of oversubscribing them. The global batch (--batch-size) is the
same for every N: each rank computes its share of it.

The step time comes from the run's own `metrics.jsonl` (`--log-every 1`: every step logs its loss
and the wall seconds since training started): (seconds at the last step - seconds at step
--warmup) / (steps - warmup), so model loading, data encoding, process-group set-up and the final
evaluation are left out. examples/s = batch size / step time. The wall time of the whole command
is reported too. `--src DIR` puts DIR first on the child's PYTHONPATH, to time another checkout's
`src/` (before/after comparisons). Writes results/scaling-<device>[-suffix].json.

    python benchmarks/scaling.py                              # t5-small-like, batch 32, p 100, 1 and 2 processes
    python benchmarks/scaling.py --device cuda --nproc 1,2,4,8
    python benchmarks/scaling.py --src /tmp/softprompt-old/src --suffix before
    python benchmarks/scaling.py --quick                      # smoke run: batch 8, p 20, 1 + 3 steps, 1000 train examples
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from backbones import PRESETS, build_backbone, data_dir
from measurement import environment, source_of, write_json

HERE = Path(__file__).resolve().parent
TASK = "sst2"
NEVER = 10**9  # --eval-every and --checkpoint-every: no evaluation or checkpoint inside the timed steps


def backbone_path(args: argparse.Namespace, work: Path) -> str:
    """The checkpoint given (a folder or packaged:NAME), else the preset that the parent saved into the work folder."""
    return args.model or str(work / "backbone")


def threads_for(args: argparse.Namespace, nproc: int) -> int:
    return args.threads or max(1, (os.cpu_count() or 1) // nproc)


def configurations(nprocs: list[int]) -> list[tuple[str, str, int]]:
    """(row name, launcher, processes): plain-1 and torchrun-1 for N = 1, torchrun-N otherwise."""
    rows = []
    for n in nprocs:
        if n == 1:
            rows.append(("plain-1", "python", 1))
        rows.append((f"torchrun-{n}", "torchrun", n))
    return rows


def train_command(args: argparse.Namespace, launcher: str, nproc: int, model: str, output: Path) -> list[str]:
    """The command line a user would type (with sys.executable for python)."""
    device = args.device
    if nproc > 1 and device.startswith("cuda"):
        device = "auto"  # softprompt refuses one explicit GPU for several ranks; auto gives each rank cuda:LOCAL_RANK
    launch = [sys.executable, "-m", "softprompt.cli"] if launcher == "python" else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "softprompt"]
    cmd = [*launch, "train", "--model", model, "--task", TASK, "--data-dir", str(data_dir(args.data_dir)),
           "--output", str(output), "--prompt-length", str(args.prompt_length), "--batch-size", str(args.batch_size),
           "--max-steps", str(args.steps), "--eval-every", str(NEVER), "--checkpoint-every", str(NEVER),
           "--log-every", "1", "--device", device, "--seed", str(args.seed), "--eval-examples", str(args.eval_examples),
           "--quiet"]
    if args.micro_batch_size:
        cmd += ["--micro-batch-size", str(args.micro_batch_size)]
    if args.train_examples:
        cmd += ["--train-examples", str(args.train_examples)]
    return cmd + shlex.split(args.train_args)


def child_env(args: argparse.Namespace, nproc: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_for(args, nproc)), SOFTPROMPT_DATA_DIR=str(data_dir(args.data_dir)))
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def step_figures(metrics: Path, warmup: int, batch_size: int) -> dict[str, Any]:
    """Step time and examples/s from the loss lines of metrics.jsonl (each: step, loss, seconds since training started)."""
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logged = {r["step"]: r for r in lines if "loss" in r}
    last = max(logged)
    if warmup not in logged or last <= warmup:
        raise RuntimeError(f"{metrics}: no loss record at step {warmup} and after it (steps logged: {sorted(logged)})")
    step_s = (logged[last]["seconds"] - logged[warmup]["seconds"]) / (last - warmup)
    return {
        "steps": last,
        "timed_steps": last - warmup,
        "step_seconds": round(step_s, 4),
        "examples_per_s": round(batch_size / step_s, 3) if step_s > 0 else None,
        "first_step_seconds": logged[min(logged)]["seconds"],
        "losses": [logged[s]["loss"] for s in sorted(logged)],
    }


def run_once(args: argparse.Namespace, name: str, launcher: str, nproc: int, model: str, work: Path, index: int) -> dict[str, Any]:
    """One configuration once, in a subprocess; its figures, or the log's tail if it failed."""
    output = work / f"{name}-{index}"
    log = work / f"{name}-{index}.log"
    cmd = train_command(args, launcher, nproc, model, output)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=child_env(args, nproc), stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n$ {shlex.join(cmd)}\n{tail}")
    return {**step_figures(output / "metrics.jsonl", args.warmup, args.batch_size), "wall_seconds": round(wall, 2),
            "load_average_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "command": shlex.join(cmd)}


def summarise(name: str, launcher: str, nproc: int, threads: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every run's figures and their medians; the losses of the first run (and whether every repeat gave the same)."""
    return {
        "launcher": launcher, "processes": nproc, "threads_per_process": threads,
        "examples_per_s": round(statistics.median(r["examples_per_s"] for r in runs), 3),
        "step_seconds": round(statistics.median(r["step_seconds"] for r in runs), 4),
        "wall_seconds": round(statistics.median(r["wall_seconds"] for r in runs), 2),
        "examples_per_s_runs": [r["examples_per_s"] for r in runs],
        "step_seconds_runs": [r["step_seconds"] for r in runs],
        "wall_seconds_runs": [r["wall_seconds"] for r in runs],
        "load_average_runs": [r["load_average_1min_start_end"] for r in runs],
        "losses": runs[0]["losses"],
        "losses_same_every_repeat": all(r["losses"] == runs[0]["losses"] for r in runs),
        "command": runs[0]["command"],
    }


def compare(rows: dict[str, dict[str, Any]]) -> None:
    """Against plain-1, in place: speedup_vs_1, efficiency, extra wall seconds and the largest loss difference."""
    base = rows.get("plain-1")
    if base is None:
        return
    for name, row in rows.items():
        if name == "plain-1":
            continue
        speedup = row["examples_per_s"] / base["examples_per_s"]
        row["speedup_vs_1"] = round(speedup, 3)
        row["efficiency"] = round(speedup / row["processes"], 3)
        row["wall_seconds_minus_plain_1"] = round(row["wall_seconds"] - base["wall_seconds"], 2)
        pairs = list(zip(row["losses"], base["losses"]))
        row["loss_max_abs_diff_vs_1"] = round(max(abs(a - b) for a, b in pairs), 5) if pairs else None


def source(args: argparse.Namespace) -> dict[str, Any]:
    """Which src/ the children imported: --src, else this checkout's; its commit and how many files differ from it."""
    src = Path(args.src).resolve() if args.src else HERE.parent / "src"
    return {**source_of(src), "on_pythonpath": bool(args.src)}


def report(args: argparse.Namespace, rows: dict[str, dict[str, Any]], load: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "scaling",
        "environment": environment(torch.device(args.device)),
        "settings": {**vars(args), "backbone_used": args.model or args.backbone, "task": TASK, "cpu_count": os.cpu_count()},
        "source": source(args),
        "rows": rows,
        "load_average_before_after": load,
        "method": {
            "step_seconds": "from the run's metrics.jsonl (--log-every 1): (seconds at the last step - seconds at step --warmup) "
            "/ (steps - warmup); seconds count from the start of training, so loading, encoding, process-group set-up and "
            "the final evaluation are excluded",
            "examples_per_s": "global batch size / step_seconds (the global batch is the same for every process count)",
            "wall_seconds": "the whole command, launcher and final evaluation (--eval-examples) included",
            "speedup_vs_1": "examples_per_s of the row / examples_per_s of plain-1 (python -m softprompt train, no launcher)",
            "efficiency": "speedup_vs_1 / processes (1.0: perfect scaling)",
            "loss_max_abs_diff_vs_1": "largest |loss - plain-1's loss| over the steps; the ranks draw their own dropout, so "
            "with dropout on, N > 1 matches plain-1 only approximately",
            "threads": "OMP_NUM_THREADS per process = --threads, default max(1, cpu_count // processes)",
            "repeats": "configurations run --repeats times, interleaved; the medians are reported and every run listed",
        },
    }


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if row.get(key) is not None else "-"


def print_table(data: dict[str, Any]) -> None:
    s = data["settings"]
    print(f"\n{s['backbone_used']}, batch {s['batch_size']}, p {s['prompt_length']}, {s['warmup']} + {s['steps'] - s['warmup']} "
          f"steps, {data['environment']['device_name']}")
    print(f"{'row':<13}{'threads':>8}{'examples/s':>11}{'step s':>9}{'wall s':>8}{'speedup':>9}{'effic.':>8}{'loss diff':>10}"
          "  examples/s of each run")
    for name, r in data["rows"].items():
        print(f"{name:<13}{r['threads_per_process']:>8}{r['examples_per_s']:>11.2f}{r['step_seconds']:>9.3f}{r['wall_seconds']:>8.1f}"
              f"{_fmt(r, 'speedup_vs_1', '.2f'):>9}{_fmt(r, 'efficiency', '.2f'):>8}{_fmt(r, 'loss_max_abs_diff_vs_1', '.4f'):>10}"
              f"  {r['examples_per_s_runs']}")
    for name, r in data["rows"].items():
        print(f"losses {name}: {r['losses']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=sorted(PRESETS), default="t5-small-like", help="random-weight preset (default: t5-small-like)")
    parser.add_argument("--model", help="a local Hugging Face checkpoint or packaged:NAME instead of a preset")
    parser.add_argument("--data-dir", help="default: $SOFTPROMPT_DATA_DIR, else /work/shared/data")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (several processes on CUDA: each rank takes cuda:LOCAL_RANK)")
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts (default 1,2; on a GPU machine e.g. 1,2,4,8)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS per process (default: max(1, cpu_count // processes))")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch, shared by the ranks; paper: 32")
    parser.add_argument("--micro-batch-size", type=int, help="passed to softprompt train")
    parser.add_argument("--prompt-length", type=int, default=100, help="p; paper: 100")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    parser.add_argument("--steps", type=int, default=13, help="all steps, warm-up included (--max-steps)")
    parser.add_argument("--eval-examples", type=int, default=64, help="dev examples of the final evaluation (wall time only)")
    parser.add_argument("--train-examples", type=int, help="train on the first N training examples (default: all)")
    parser.add_argument("--train-args", default="", help="more flags for softprompt train, e.g. '--precision bf16'")
    parser.add_argument("--repeats", type=int, default=1, help="run every configuration this many times, interleaved; medians reported")
    parser.add_argument("--seed", type=int, default=0, help="preset weights and softprompt train --seed")
    parser.add_argument("--rows", help="only these rows, e.g. plain-1 (an older checkout has no `python -m softprompt` for torchrun)")
    parser.add_argument("--src", help="put this folder (another checkout's src/) first on the children's PYTHONPATH")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, p 20, 1 + 3 steps, 1000 train and 16 eval examples")
    parser.add_argument("--suffix", help="results/scaling-<device>-SUFFIX.json (--quick: 'quick')")
    parser.add_argument("--output", help="default: benchmarks/results/scaling-<device>[-suffix].json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.prompt_length, args.warmup, args.steps, args.eval_examples = 8, 20, 1, 4, 16
        args.train_examples, args.suffix = args.train_examples or 1000, args.suffix or "quick"
    try:
        args.nproc = [int(n) for n in args.nproc.split(",")]
    except ValueError:
        parser.error(f"--nproc: comma-separated integers, not {args.nproc!r}")
    if any(n < 1 for n in args.nproc):
        parser.error("--nproc: process counts are at least 1")
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps (the step time runs from the warm-up's last step to the last)")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        model = backbone_path(args, work)
        if not args.model:  # saved once, so every process loads the very same weights
            backbone, tokenizer, _ = build_backbone(args.backbone, None, args.seed, data_dir(args.data_dir))
            backbone.save_pretrained(model)
            tokenizer.save_pretrained(model)
            del backbone
        configs = [c for c in configurations(args.nproc) if not args.rows or c[0] in args.rows.split(",")]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
        load_before = os.getloadavg()
        for index in range(args.repeats):
            for name, launcher, nproc in configs:
                print(f"{name} (run {index + 1}/{args.repeats}, {threads_for(args, nproc)} threads per process) ...", flush=True)
                runs[name].append(run_once(args, name, launcher, nproc, model, work, index))
        load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    rows = {name: summarise(name, launcher, nproc, threads_for(args, nproc), runs[name]) for name, launcher, nproc in configs}
    compare(rows)
    data = report(args, rows, load)
    print_table(data)
    device = torch.device(args.device).type
    output = Path(args.output) if args.output else HERE / "results" / f"scaling-{device}{'-' + args.suffix if args.suffix else ''}.json"
    write_json(output, data)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
