"""The run cache shared by the studies under one ROOT: a training point's directory is named by its config.

Length, init, ensemble, neighbours, scale and methods all need p = 100 class-label prompts on the
same backbone and budget; keyed by the normalised training config (minus what does not change the
run: where it is written, the device, where the data is read from, the fields a resume may change),
each such run trains once and every study that needs it reads the same directory. A lock file
beside each directory keeps two processes (workers, shards on a shared filesystem) from training
the same run at once: the second waits, then finds it finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import TrainConfig, normalised
from ..errors import SoftpromptError
from ..run import LOG_FILE, RESULT_FILE, RUN_FILE, config_differences, with_defaults
from ..train import PREDICTIONS_FILE, RESUMABLE_FIELDS, TrainResult

POINTS_DIR = "points"
NOT_THE_RUN = {"output", "device", "data_dir", *RESUMABLE_FIELDS}


def run_key(config: TrainConfig) -> str:
    """TASK-HASH: the first 12 hex digits of the SHA-256 of the config's canonical JSON, less NOT_THE_RUN.

    Fields at their default value are left out, so a setting added to TrainConfig later (with a
    default that keeps the old behaviour) does not orphan every finished run.
    """
    data = without_defaults(normalised(config), normalised(TrainConfig(task=config.task)))
    data = {k: v for k, v in data.items() if k not in NOT_THE_RUN}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return f"{config.task}-{digest}"


def without_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            value = without_defaults(value, default)
        if value != default and not (isinstance(default, dict) and value == {}):
            out[key] = value
    return out


def cached_output(root: Path, config: TrainConfig) -> Path:
    return Path(root) / POINTS_DIR / run_key(config)


@contextmanager
def point_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on OUTPUT.lock while the run is trained or read (flock: released if the process dies)."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(output: str | os.PathLike) -> Path:
    """OUTPUT.lock, beside the run directory (not in it, so a fresh run's directory is created under the lock)."""
    return Path(f"{output}.lock")


def point_busy(output: str | os.PathLike) -> bool:
    """Whether another process holds OUTPUT.lock now (training or reading that run); takes no lock itself."""
    path = lock_path(output)
    if not path.exists():
        return False
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def finished_result(config: TrainConfig) -> TrainResult | None:
    """The run's result when its directory holds this very run, finished (and dev-scored, with a selection split)."""
    output = Path(config.output)
    try:
        saved = json.loads((output / RUN_FILE).read_text(encoding="utf-8"))
        result = json.loads((output / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    saved = with_defaults(saved, normalised(TrainConfig()))  # fields added since it was saved
    if config_differences(saved, normalised(config), NOT_THE_RUN) or result.get("steps", -1) < config.max_steps:
        return None
    if config.select_examples is not None and "dev_best" not in result:
        return None
    return TrainResult(output, result["steps"], result["best_step"], result["best_metrics"], result["seconds"],
                       result.get("dev_best"), result.get("dev_last"), result.get("metric"))


def run_summary(result: TrainResult, output: Path, root: Path) -> dict[str, Any]:
    """A point record's training part: scores, the chosen step, the curve, and which dev examples it got right."""
    metric = result.metric
    select = result.best_metrics[metric]
    record: dict[str, Any] = {"metric": metric, "score": select, "metrics": result.best_metrics, "steps": result.steps,
                              "best_step": result.best_step, "seconds": round(result.seconds, 1),
                              "run": os.path.relpath(output, root), "curve": curve(output, metric)}
    if result.dev_best is not None:
        predictions = json.loads((output / PREDICTIONS_FILE).read_text(encoding="utf-8"))
        record.update(score=result.dev_best[metric], score_last=result.dev_last[metric], select_score=select,
                      metrics=result.dev_best, metrics_last=result.dev_last,
                      dev_correct=correct_string(predictions["best"], predictions["targets"]),
                      dev_correct_last=correct_string(predictions["last"], predictions["targets"]))
    return record


def correct_string(outputs: list[str], targets: list[str]) -> str:
    """'1' where the output is the target, else '0': one character per dev example, in dev order."""
    return "".join("1" if output == target else "0" for output, target in zip(outputs, targets))


def curve(output: Path, metric: str) -> list[list[float]]:
    """[step, score] of every evaluation in the run's log (the selection split's, or dev's without one)."""
    points = []
    for line in (output / LOG_FILE).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "eval" in entry and metric in entry["eval"]:
            points.append([entry["step"], entry["eval"][metric]])
    return points


def train_processes(config: TrainConfig, nproc: int) -> TrainResult:
    """Train (or resume) `config` as one data-parallel run of `nproc` processes: `torchrun --standalone -m softprompt train`.

    The config travels as a run.json (`--config`), so the run is the one `train(config)` would make.
    Raises SoftpromptError with the job's last error line when it fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / RUN_FILE
        spec.write_text(json.dumps(normalised(config)), encoding="utf-8")
        torchrun(["-m", "softprompt", "train", "--config", str(spec), "--resume", "--quiet"], config.output, nproc)
    result = finished_result(config)
    if result is None:
        raise SoftpromptError(f"{config.output}: the {nproc}-process run ended without a finished result")
    return result


def torchrun(args: list[str], output: str | os.PathLike, nproc: int) -> None:
    """Run `python ARGS` as a `torchrun --standalone` job of `nproc` processes (one torch thread each); returns when it ends.

    Raises SoftpromptError naming `output` and the job's first error line when it fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "job.log"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
        with log.open("w") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
        if code != 0:
            lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if "error" in line.lower()]
            raise SoftpromptError(f"{output}: the {nproc}-process run failed ({lines[0] if lines else f'exit {code}'})")
