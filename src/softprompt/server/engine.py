"""The engine: one thread owns the model and schedules every request onto it; it knows nothing of HTTP.

Requests arrive as jobs (work.py) and wait in a bounded queue, counted in examples (a score
request counts its candidates, a generation its choices): past `max_queued` a job is refused
with `Overloaded` at once instead of waiting behind work it would time out on. Each turn of the
loop (iteration-level scheduling, as Orca and vLLM do it):

1. runs due controls (prompt loads and unloads, directory rescans) between batches, so no batch
   ever sees a prompt half-changed;
2. drops jobs whose client went away or whose deadline passed, before computing them;
3. scores one batch of rank jobs (bounded by `max_batch_size` candidate rows and
   `max_batch_tokens` padded tokens per forward);
4. starts new generations as a cohort (one prefill forward), up to `max_running` sequences;
5. advances every running cohort by one token, emitting one event per sequence;
6. after work, at most every `trim_every_s`, hands the memory the C library kept back to the OS
   (memory.py: tensors of ever-changing shapes otherwise grow resident memory without bound).

So a short rank request waits for at most one decode step of the running generations, never for
a whole generation, and new generations join between steps. On a decoder-only backbone a new
cohort is merged into the running one (caches left-padded to one length), so each step is one
forward for every sequence (continuous batching); an encoder-decoder's cohorts (encoder outputs
and relative decoder positions of different lengths) step one forward each.

No exception leaves the thread: a batch that fails is retried in halves until the job that
causes it fails alone, and input a tokenizer cannot take fails its own job as `InvalidInput`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..data import Features
from ..evaluate import rank_scores
from ..model import PromptedModel
from .errors import (
    BatchFailed,
    Cancelled,
    DeadlineExceeded,
    EngineError,
    Overloaded,
    ShuttingDown,
)
from .generation import Generations
from .memory import trimmer
from .metrics import ServerMetrics
from .tokenising import Tokeniser
from .work import Job, settle

log = logging.getLogger("softprompt.server")
RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class EngineSettings:
    max_batch_size: int = 64
    max_batch_tokens: int | None = 1024
    max_wait_s: float = 0.005
    max_running: int = 64
    max_queued: int = 1024
    stuck_seconds: float = 120.0
    hook_every_s: float = 0.0  # how often `between_batches` runs (0: never)
    trim_every_s: float = 5.0  # how often freed memory may be handed back to the OS after work (0: never)


@dataclass
class _Control:
    fn: Callable[[], Any]
    future: Future


_STOP = object()


class Engine:
    """`submit(job)` returns the job's future; `call(fn)` runs fn on the model thread between batches."""

    def __init__(self, model: PromptedModel, settings: EngineSettings = EngineSettings(), metrics: ServerMetrics | None = None,
                 between_batches: Callable[[], None] | None = None):
        self.model, self.settings = model, settings
        self.metrics = metrics or ServerMetrics()
        self.between_batches = between_batches
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0  # examples submitted and not yet started (guarded by _lock)
        self._jobs: dict[int, Job] = {}  # every unsettled job, for the age of the oldest (guarded by _lock)
        self._waiting: deque[Job] = deque()  # model thread only
        self.tokeniser = Tokeniser(model)
        self.generations = Generations(model, self.metrics, self.tokeniser, self._fail, self._observe_forward)
        self._closing = False
        self._drain_until = math.inf
        self._finished: deque[tuple[float, int]] = deque()  # (when, cost) of recent jobs: what Retry-After is estimated from
        self._next_hook = time.monotonic() + settings.hook_every_s
        self._trim = trimmer() if settings.trim_every_s > 0 else None
        self._next_trim = time.monotonic() + settings.trim_every_s
        self._worked = False  # tensors were allocated since the last trim
        self.heartbeat = time.monotonic()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="softprompt-engine", daemon=True)
        self._thread.start()

    # ---- the edge's side -------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        if self._closing or not self.alive:
            raise ShuttingDown("the server is shutting down" if self._closing else "the model thread has stopped")
        with self._lock:
            if self._queued and self._queued + job.cost > self.settings.max_queued:
                raise Overloaded(f"{self._queued} examples are queued (--max-queued {self.settings.max_queued}); retry later",
                                 self._retry_after())
            self._queued += job.cost
            self._jobs[id(job)] = job
        job.enqueued = time.monotonic()
        job.future.add_done_callback(lambda _: self._forget(job))
        self._inbox.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the model thread between batches (bank changes); its result or exception in the future."""
        if self._closing or not self.alive:
            raise ShuttingDown("the server is shutting down")
        future: Future = Future()
        self._inbox.put(_Control(fn, future))
        return future

    def close(self, drain_s: float = 20.0) -> None:
        """Refuse new work, let queued and running work finish for up to `drain_s`, then fail the rest."""
        self._closing = True
        self._drain_until = time.monotonic() + drain_s
        self._inbox.put(_STOP)
        self._thread.join(drain_s + 5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def health(self) -> dict:
        """What /healthz reports: alive, queue depth, running sequences, the oldest job's age, stuck or not."""
        now = time.monotonic()
        with self._lock:
            queued, oldest = self._queued, min((j.enqueued for j in self._jobs.values()), default=None)
        running = self.generations.running
        silent = now - self.heartbeat
        stuck = bool(oldest is not None and silent > self.settings.stuck_seconds)
        return {"alive": self.alive, "stuck": stuck, "queued_examples": queued, "running_sequences": running,
                "oldest_job_age_s": round(now - oldest, 3) if oldest is not None else 0.0,
                "seconds_since_model_thread_moved": round(silent, 3), "closing": self._closing}

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(id(job), None)
            if not job.future.cancelled() and job.future.exception() is None:
                self._finished.append((time.monotonic(), job.cost))
            self._prune_finished()

    def _prune_finished(self) -> None:
        """Keep only the last `RATE_WINDOW_S` of finished jobs (guarded by _lock): bounded on any server, overloaded or not."""
        now = time.monotonic()
        while self._finished and now - self._finished[0][0] > RATE_WINDOW_S:
            self._finished.popleft()

    def _retry_after(self) -> float:
        """Seconds until the queue would drain at the rate jobs finished over the last `RATE_WINDOW_S` (guarded by _lock).

        Rate and queue are both in cost units (candidates, choices), whole jobs from arrival to
        result, so generation's decode steps count as much as its prefill. With nothing measured
        yet (a fresh replica) the answer is the 1 s floor rather than a guess.
        """
        self._prune_finished()
        if not self._finished:
            return 1.0
        now = time.monotonic()
        span = max(now - self._finished[0][0], 1.0)
        rate = sum(cost for _, cost in self._finished) / span
        return float(min(60, max(1, math.ceil(self._queued / rate))))

    def _started(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            self._queued -= sum(j.cost for j in jobs)
        self.metrics.waiting.set(self._queued)

    # ---- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._turn():
                pass
        except BaseException as err:  # noqa: BLE001 - the last resort: /healthz turns 503 and every job is told
            log.exception("the model thread stopped")
            self.failure = err
        finally:
            self._fail_everything(ShuttingDown("the server is shutting down") if self.failure is None
                                  else BatchFailed(f"the model thread stopped: {type(self.failure).__name__}"))

    def _turn(self) -> bool:
        """One scheduling turn; False when the engine is to stop."""
        self.heartbeat = time.monotonic()
        if not self._take():
            return False
        self._drop_dead()
        self._worked = self._worked or bool(self._waiting or self.generations.cohorts)
        self._run_rank()
        self._admit()
        self.generations.step_all()
        self._hook()
        self._release_memory()
        self.metrics.running.set(self.generations.running)
        return True

    def _take(self) -> bool:
        """Move what arrived into the waiting list; blocks (then gathers for `max_wait_s`) when idle."""
        stopping = self._closing and self._inbox.empty()
        if stopping and (not (self._waiting or self.generations.cohorts) or time.monotonic() > self._drain_until):
            return False
        idle = not (self._waiting or self.generations.cohorts)
        if idle:
            wake = [self._next_hook] if self.settings.hook_every_s > 0 else []
            if self._trim is not None and self._worked:
                wake.append(self._next_trim)  # an idle server still gives back what its last work freed
            timeout = max(min(wake) - time.monotonic(), 0.01) if wake else None
            try:
                first = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return True
            if not self._handle(first):
                return bool(self._waiting or self.generations.cohorts)
            gather_until = time.monotonic() + self.settings.max_wait_s
            while sum(j.cost for j in self._waiting) < self.settings.max_batch_size:
                try:
                    message = self._inbox.get(timeout=max(gather_until - time.monotonic(), 0))
                except queue.Empty:
                    break
                if not self._handle(message):
                    break
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return True
            self._handle(message)

    def _handle(self, message) -> bool:
        """A job waits; a control runs now (no batch is in flight); the stop marker returns False."""
        if message is _STOP:
            return False
        if isinstance(message, _Control):
            try:
                settle(message.future, message.fn())
            except Exception as err:  # noqa: BLE001 - handed to the caller, never raised in the thread
                settle(message.future, error=err)
            return True
        self._waiting.append(message)
        return True

    def _hook(self) -> None:
        if self.between_batches is None or self.settings.hook_every_s <= 0 or time.monotonic() < self._next_hook:
            return
        self._next_hook = time.monotonic() + self.settings.hook_every_s
        try:
            self.between_batches()
        except Exception:  # noqa: BLE001 - a failed rescan is logged; the server goes on with what it has
            log.exception("between-batches hook failed")

    def _release_memory(self) -> None:
        """After work, at most every `trim_every_s`: the freed memory the C library keeps goes back to the OS (memory.py)."""
        if self._trim is None or not self._worked or time.monotonic() < self._next_trim:
            return
        start = time.perf_counter()
        self._trim()
        self.metrics.trim_seconds.observe(time.perf_counter() - start)
        self._worked = False
        self._next_trim = time.monotonic() + self.settings.trim_every_s

    def _drop_dead(self) -> None:
        now = time.monotonic()
        for job in list(self._waiting):
            error = Cancelled("client went away") if job.cancelled else (
                DeadlineExceeded(f"not started within the request timeout ({job.timeout_s:g} s)") if now > job.deadline else None)
            if error is not None:
                self._waiting.remove(job)
                self._started([job])
                self._fail(job, error)

    def _fail(self, job: Job, error: EngineError) -> None:
        self.metrics.failures.labels(error.kind).inc()
        settle(job.future, error=error)

    def _fail_everything(self, error: EngineError) -> None:
        for job in list(self._waiting):
            self._fail(job, error)
        self._started(list(self._waiting))
        self._waiting.clear()
        for job in self.generations.jobs():
            self._fail(job, error)
        self.generations.cohorts.clear()
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, Job):
                self._started([message])
                self._fail(message, error)
            elif isinstance(message, _Control):
                settle(message.future, error=error)

    def _pick(self, kind: str, budget: int, cost: Callable[[Job], int]) -> list[Job]:
        """Waiting jobs of `kind` in arrival order while their cost fits `budget` (the first one always)."""
        picked, used = [], 0
        for job in [j for j in self._waiting if j.kind == kind]:
            if picked and used + cost(job) > budget:
                break
            picked.append(job)
            used += cost(job)
        for job in picked:
            self._waiting.remove(job)
        self._started(picked)
        now = time.monotonic()
        for job in picked:
            self.metrics.queue_wait.observe(now - job.enqueued)
        return picked

    # ---- rank classification ---------------------------------------------------------------
    def _run_rank(self) -> None:
        jobs = self._pick("rank", self.settings.max_batch_size, lambda j: j.cost)
        self._in_halves(self._encoded(jobs), self._settle_rank)

    def _encoded(self, jobs: list[Job]) -> list[tuple[Job, list[Features]]]:
        """Each job with its features; a job whose input is at fault fails here, alone."""
        ready = []
        for job in jobs:
            try:
                ready.append((job, self.tokeniser.features(job)))
            except EngineError as err:
                self._fail(job, err)
        return ready

    def _in_halves(self, group: list[tuple[Job, list[Features]]], compute: Callable[[list], None]) -> None:
        """`compute(group)`; when it raises, each half again, until the job that causes it fails alone."""
        group = [(job, feats) for job, feats in group if not job.cancelled]
        if not group:
            return
        try:
            compute(group)
        except Exception as err:  # noqa: BLE001 - never out of the thread: the failing job gets the error
            if len(group) > 1:
                half = len(group) // 2
                self._in_halves(group[:half], compute)
                self._in_halves(group[half:], compute)
            elif isinstance(err, EngineError):
                self._fail(group[0][0], err)
            else:
                log.exception("a job of %d examples failed", len(group[0][1]))
                self._fail(group[0][0], BatchFailed(f"the model failed on this request: {type(err).__name__}: {err}"))

    def _settle_rank(self, group: list[tuple[Job, list[Features]]]) -> None:
        for (job, _), scores in zip(group, self._rank(group)):
            settle(job.future, scores)

    def _rank(self, group: list[tuple[Job, list[Features]]]) -> list[list[list[float]]]:
        features = [f for _, feats in group for f in feats]
        candidates = [c for job, _ in group for c in job.candidates]
        per_forward = max(1, self.settings.max_batch_size // max(len(c) for c in candidates))  # candidate rows bounded
        start = time.perf_counter()
        scores = rank_scores(self.model, features, candidates, per_forward, max_tokens=self.settings.max_batch_tokens)
        self._observe_forward("rank", start, len(features))
        out, at = [], 0
        for _, feats in group:
            out.append(scores[at:at + len(feats)])
            at += len(feats)
        return out

    def _observe_forward(self, kind: str, start: float, examples: int) -> None:
        seconds = time.perf_counter() - start
        self.metrics.forward_seconds.labels(kind).observe(seconds)
        self.metrics.batch_examples.observe(examples)

    # ---- generation ------------------------------------------------------------------------
    def _admit(self) -> None:
        room = self.settings.max_running - self.generations.running
        if room <= 0 or not any(j.kind == "generate" for j in self._waiting):
            return
        jobs = self._pick("generate", min(room, self.settings.max_batch_size), lambda j: j.cost)
        self._in_halves(self._encoded(jobs), self.generations.start)

    def _start(self, group: list[tuple[Job, list[Features]]]) -> None:
        cohort = self._prefill(group)
        if cohort is not None:
            self.generations.cohorts.append(cohort)
            self._merge()

