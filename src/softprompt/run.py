"""The run component: one output directory, its saved config, checkpoints, log, random state and stop rule.

Shared by prompt training and pretraining. A run directory holds `run.json` (the config), a
checkpoint written atomically, `metrics.jsonl` (whole lines; on resume the lines written after
the checkpoint are dropped, since they will be written again), and a result file. Only the
process with `writer=True` touches files, and `Stopper` alone decides when a run ends, so a
multi-process launcher can wrap the loop without changing it.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import SoftpromptError
from .files import append_jsonl, atomic_path, write_json_atomic, write_text_atomic

RUN_FILE, LOG_FILE, RESULT_FILE = "run.json", "metrics.jsonl", "result.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def config_differences(saved: dict[str, Any], current: dict[str, Any], resumable: Iterable[str]) -> list[str]:
    """Fields (dotted for nested ones) whose values differ, ignoring those a resume may change."""
    resumable = set(resumable)
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in resumable:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "task_spec":
            out += [f"{key}.{k}" for k in config_differences(a, b, ())]
        elif json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
            out.append(key)
    return out


def check_writable(output: Path) -> None:
    """Refuse an output that is a file, or lies where nothing can be written; creates nothing."""
    if output.exists() and not output.is_dir():
        raise SoftpromptError(f"{output}: is a file, not a run directory; choose another --output")
    ancestor = output
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SoftpromptError(f"{output}: {ancestor} is a file, so no run directory can be made there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SoftpromptError(f"{output}: {ancestor} is not writable")


def with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A saved config completed with today's defaults (nested too): a field added since the run was saved
    has a default that keeps the old behaviour, so the run used that value."""
    out = {**defaults, **saved}
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out[key] = with_defaults(value, defaults[key])
    return out


class RunDir:
    """A run's folder. `markers` are the files whose presence means the run has started.

    A folder holding only `run.json` (a run that failed before its first checkpoint) is taken as
    not started: a new run or a resume may replace it, and nothing saved is lost.
    `log_name`, `result_name`: the folder's log and result files. `run_file` None: no `run.json`,
    the config is kept in the checkpoint instead (`saved_config`), as pretraining's folder does.
    `defaults`: the config's default values, which a saved config lacking a newer field is read with.
    """

    def __init__(self, output: str | os.PathLike, config: dict[str, Any], resumable: Iterable[str], resume: bool,
                 markers: Iterable[str], checkpoint_name: str, writer: bool = True, log_name: str = LOG_FILE,
                 result_name: str = RESULT_FILE, run_file: str | None = RUN_FILE, defaults: dict[str, Any] | None = None):
        self.output = Path(output)
        self.config, self.resumable, self.resume = config, set(resumable), resume
        self.markers, self.writer = tuple(markers), writer
        self.checkpoint_path = self.output / checkpoint_name
        self.log_path, self.result_path = self.output / log_name, self.output / result_name
        self.run_file, self.defaults = run_file, defaults or {}

    @property
    def started(self) -> bool:
        return any((self.output / m).exists() for m in self.markers)

    def check(self) -> None:
        """Refuse to mix two runs in one directory; allow resuming the same run. Writes nothing."""
        check_writable(self.output)
        if self.started and (self.run_file is None or (self.output / self.run_file).is_file()):
            if not self.resume:
                raise SoftpromptError(f"{self.output} already holds a run; pass --resume to continue it, or choose another --output")
            differing = config_differences(with_defaults(self.saved_config(), self.defaults), self.config, self.resumable)
            if differing:
                raise SoftpromptError(f"{self.output} holds a different run ({', '.join(differing)} differ); choose another --output")
        elif self.output.is_dir():
            own = {self.run_file, self.log_path.name, self.result_path.name}
            if any(p.name not in own for p in self.output.iterdir()):
                raise SoftpromptError(f"{self.output} is not empty and holds no softprompt run; choose another --output")

    def saved_config(self) -> dict[str, Any]:
        """The config the run in the folder was started with (its `run.json`)."""
        run_file = self.output / self.run_file
        try:
            return json.loads(run_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SoftpromptError(f"{run_file}: corrupt run config ({err})") from None

    def start(self, check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Write `run.json` and return the checkpoint to resume from (None for a fresh start).

        `check` sees the checkpoint before anything is written, and may refuse it (raise).
        """
        if not self.writer:
            state = self.load_checkpoint()
            if state is not None and check is not None:
                check(state)
            return state
        try:
            self.output.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SoftpromptError(f"{self.output}: cannot create the run directory ({err.strerror})") from None
        state = self.load_checkpoint() if self.started else None
        if state is not None and check is not None:
            check(state)
        if state is None:
            self.log_path.unlink(missing_ok=True)
        else:
            self.truncate_log(state["step"])
        if self.run_file is not None:
            write_json_atomic(self.output / self.run_file, self.config)
        return state

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        try:
            return torch.load(self.checkpoint_path, weights_only=False, map_location="cpu")
        except Exception as err:  # a torn or foreign file: say which, do not crash
            raise SoftpromptError(f"{self.checkpoint_path}: unreadable checkpoint ({type(err).__name__}: {err})") from None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.writer:
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save(state, tmp)

    def truncate_log(self, step: int) -> None:
        """Keep the log lines up to the checkpoint's step; later ones will be written again."""
        if self.log_path.is_file():
            lines = [line for line in self.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
            write_text_atomic(self.log_path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if self.writer:
            append_jsonl(self.log_path, record)

    def write_result(self, result: dict[str, Any]) -> None:
        if self.writer:
            write_json_atomic(self.result_path, result)


class Stopper:
    """When a run ends: at `max_steps`, or once `max_minutes` of wall-clock time have passed.

    Its progress bar counts steps toward the end the run will actually reach: under a time limit
    the total is re-estimated from the speed so far, so the bar ends where the run ends.
    `before` is the time earlier calls of a resumed run spent: `elapsed` counts it, so a resumed
    run's log and result give the run's whole time; `max_minutes` limits this call only.
    """

    def __init__(self, max_steps: int, max_minutes: float | None, step: int, desc: str, progress: bool = True,
                 before: float = 0.0):
        self.max_steps, self.first_step, self.before = max_steps, step, before
        self.started = time.monotonic()
        self.deadline = self.started + 60 * max_minutes if max_minutes else None
        self.bar = tqdm(total=max_steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)

    def should_stop(self, step: int) -> bool:
        return step >= self.max_steps or (self.deadline is not None and time.monotonic() >= self.deadline)

    def advance(self, step: int, **postfix: str) -> None:
        self.bar.update(step - self.bar.n)
        if self.deadline is not None and step > self.first_step:
            rate = (step - self.first_step) / max(time.monotonic() - self.started, 1e-9)  # steps/s
            expected = step + int(rate * max(self.deadline - time.monotonic(), 0.0))
            self.bar.total = max(step, min(self.max_steps, expected))
        if postfix:
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        self.bar.total = self.bar.n
        self.bar.close()

    def elapsed(self) -> float:
        """Seconds since the run began, the calls before a resume included."""
        return self.before + time.monotonic() - self.started
