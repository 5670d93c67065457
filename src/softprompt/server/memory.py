"""Handing the memory the model thread freed back to the operating system, between batches.

On a CPU, torch takes every tensor from the C library's malloc. The engine's tensors change shape on
every turn (a rank batch's rows and padded length, a cohort's rows and its caches one position wider
per decode step), and two threads allocate (the model thread and the event loop), so glibc serves
them from several arenas and keeps what is freed there for reuse instead of returning it: the
process's resident memory climbs while the memory in use does not. Measured on SmolLM2-135M under
the soak load of benchmarks/serve_load.py (issue 26): malloc's bytes in use stayed between 335 and
550 MiB while its arenas' free bytes grew from 84 MiB to 1.1 GiB, with the Python objects and
tensors alive flat; resident memory followed the arenas. Neither `MALLOC_ARENA_MAX=2` (same growth)
nor a fixed 1 MiB `MALLOC_MMAP_THRESHOLD_` (flat, but half the throughput: every large tensor
page-faulted afresh) was the answer; this was: with it, a 4-minute soak's resident memory after the
first minute stayed at 1.4-1.9 GiB instead of 2.2-2.5 GiB, at a cost of about 60 ms per trim.

`malloc_trim(0)` gives the free pages inside every arena back (it madvises them away; the arenas
keep their address space), so calling it on the model thread between batches keeps resident memory
near what is in use. Where the C library has no `malloc_trim` (macOS, Windows, musl) `trimmer()`
returns None and nothing is called.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


def trimmer() -> Callable[[], None] | None:
    """A function that returns freed heap memory to the OS (glibc's `malloc_trim(0)`), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: the C library it runs on
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries without it
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release
