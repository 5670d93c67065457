"""How the benchmarks measure: wall-clock timing with device sync, peak memory, and the record of the run.

Peak memory
- CUDA: `torch.cuda.reset_peak_memory_stats()` just before the first measured step, then
  `torch.cuda.max_memory_allocated()` minus what was allocated at that moment (the model, the
  data): the growth that training itself needs.
- CPU: each system runs in its own process. Just before its first step the process's peak
  resident set size is reset (writing "5" to /proc/self/clear_refs, Linux >= 4.0) and its current
  RSS noted; afterwards `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the same high-water mark) minus
  that RSS is the growth. Where the reset is not allowed, the growth is ru_maxrss after minus
  ru_maxrss before, which undercounts when setup had a higher peak; the record says which was used.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

MIB = 1024 * 1024


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def environment(device: torch.device) -> dict[str, Any]:
    """What a reader needs to reproduce or compare a result."""
    return {
        "command": shlex.join(["python", script_path(), *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "platform": platform.platform(),
    }


def script_path() -> str:
    """The running script, relative to the repository when inside it (links resolved)."""
    path = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class PeakMemory:
    """Peak memory growth from `start()` to `stop()`; see the module docstring for the method."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self.baseline = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - memory_allocated at start"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (VmHWM, ru_maxrss) to the current RSS
            self.baseline = _rss_bytes()
            self.method = "ru_maxrss after - RSS at start, peak RSS reset at start via /proc/self/clear_refs"
        except OSError:
            self.baseline = _maxrss_bytes()
            self.method = "ru_maxrss after - ru_maxrss before (no peak reset possible: may undercount)"

    def stop(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _maxrss_bytes()
        return {
            "method": self.method,
            "baseline_mib": round(self.baseline / MIB, 1),
            "peak_mib": round(peak / MIB, 1),
            "growth_mib": round((peak - self.baseline) / MIB, 1),
        }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def source_of(src: Path) -> dict[str, Any]:
    """Which checkout a child process imported: the folder, its git commit and how many files differ from it."""
    git = ["git", "--no-optional-locks", "-C", str(src)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        commit, changed = "", ""
    return {"src": str(src), "commit": commit or None, "files_changed_from_commit": len(changed.splitlines())}
