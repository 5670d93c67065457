"""The server under test in benchmarks/serve_load.py: a `softprompt serve` subprocess (from this checkout or
another's `src`), started once /healthz answers and stopped with SIGTERM, and its memory.

Apart from the load clients (load_clients.py) and the phases (load_phases.py) because every phase,
the throughput ones of serve_load.py included, starts and stops a server the same way, and the
checkout whose server is measured (`--server-src`) decides which serve flags exist. `Sampler` reads
the server's RSS (or any other probe) in a thread while a phase runs.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from measurement import source_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def own_maxrss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def start(command: list[str], port: int, timeout: float, env: dict | None = None, log: Path | None = None
          ) -> tuple[subprocess.Popen, float]:
    """A server subprocess, once /healthz answers; returns it and its start time in seconds.

    Its stderr goes to `log` (a pipe nobody reads would fill and block the server's logging)."""
    begin = time.perf_counter()
    log = log or Path(os.devnull)
    with open(log, "ab") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    while time.perf_counter() - begin < timeout:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise SystemExit(f"server exited during start ({' '.join(command)}): {tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - begin
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


class ServerSource:
    """The code `softprompt serve` runs: this checkout, or the `src` folder of another one (first on PYTHONPATH).

    Its flags are read from its own `serve --help`, so a phase passes only the options that checkout has."""

    def __init__(self, src: Path | None):
        self.src = src.resolve() if src else None
        self.env = dict(os.environ)
        if self.src:
            self.env["PYTHONPATH"] = os.pathsep.join([str(self.src), *filter(None, [os.environ.get("PYTHONPATH")])])
        help_text = subprocess.run([sys.executable, "-m", "softprompt.cli", "serve", "--help"], env=self.env,
                                   capture_output=True, text=True, timeout=300).stdout
        self.flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
        if "--prompts" not in self.flags:
            raise SystemExit(f"`softprompt serve --help` of {self.src or 'this checkout'} lists no --prompts:\n{help_text[-1000:]}")

    def command(self, model: str, prompts: Path, port: int, options: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The serve command with the options this checkout has; and the options it lacks (dropped)."""
        command = [sys.executable, "-m", "softprompt.cli", "serve", "--model", model, "--prompts", str(prompts), "--port", str(port)]
        dropped = []
        for flag, value in options.items():
            if value is None:
                continue
            if flag in self.flags:
                command += [flag, str(value)]
            else:
                dropped.append(flag)
        return command, dropped

    @property
    def continuous(self) -> bool:
        """The rebuilt server (step-level generation, bounded queue); the old one takes fewer completion fields."""
        return "--max-running" in self.flags

    def describe(self) -> dict[str, Any]:
        src = self.src or Path(__file__).resolve().parents[1] / "src"
        return {**source_of(src), "continuous_batching": self.continuous}


class Sampler(threading.Thread):
    """Calls `fn` every `interval` seconds until stopped (at most `limit` samples); keeps (seconds since start, value)."""

    def __init__(self, fn: Callable[[], Any], interval: float, limit: int = 100_000):
        super().__init__(daemon=True)
        self.fn, self.interval, self.limit = fn, interval, limit
        self.samples: list[tuple[float, Any]] = []
        self.stopping = threading.Event()
        self.began = time.perf_counter()

    def run(self) -> None:
        while not self.stopping.is_set() and len(self.samples) < self.limit:
            self.samples.append((round(time.perf_counter() - self.began, 3), self.fn()))
            self.stopping.wait(self.interval)

    def finish(self) -> list[tuple[float, Any]]:
        self.stopping.set()
        self.join(60)
        return self.samples
