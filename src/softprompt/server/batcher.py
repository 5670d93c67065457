"""Dynamic batching: concurrent requests, for any mix of prompts, gathered into one forward.

One thread owns the model. Requests queue up as jobs; the thread takes the first, waits up to
`max_wait_s` for others until `max_batch_size` examples are gathered, tokenises each job with its
own prompt's settings, and runs every job of a method in one call of the same functions
`softprompt predict` uses (which split the gathered examples by length into forwards of at most
`max_batch_tokens` padded tokens), so each example wears its own prompt and the answers are predict's.
Changes to the prompt bank (hot load and unload) run on the same thread between batches, so a
batch never sees a prompt half-added. A job whose input is bad fails alone (4xx); an exception
inside a forward fails the jobs of that forward only (500).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from ..data import Features, encode
from ..errors import SoftpromptError
from ..evaluate import generate_ids, generated_text, rank_scores
from ..model import PromptedModel
from ..tasks.base import Example

log = logging.getLogger("softprompt.server")


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, a message, and the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass
class Job:
    """One request's examples: (prompt name, input text) pairs, and per example its candidates under "rank"."""

    method: str  # "rank" or "generate"
    items: Sequence[tuple[str, str]]
    candidates: Sequence[Sequence[str]] | None = None
    max_new_tokens: int = 16
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass
class Generated:
    """One generated output: its ids (cut after the end token), its text, and how many input tokens it read."""

    ids: list[int]
    text: str
    input_tokens: int


_STOP = object()


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Hand a result or error to a future, unless its client already went away (cancelled it)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Batcher:
    """The model's thread; `submit(job)` returns the job's future, `call(fn)` runs fn between batches."""

    def __init__(self, model: PromptedModel, max_batch_size: int, max_wait_s: float, metrics: Any = None,
                 max_batch_tokens: int | None = None):
        self.model, self.max_batch_size, self.max_wait_s, self.metrics = model, max_batch_size, max_wait_s, metrics
        self.max_batch_tokens = max_batch_tokens
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="softprompt-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        if self._closed:
            raise RequestError(503, "the server is shutting down")
        self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the model thread between batches (bank changes); its result or exception in the future."""
        future: Future = Future()
        if self._closed:
            raise RequestError(503, "the server is shutting down")
        self._queue.put((fn, future))
        return future

    def close(self) -> None:
        """Finish every job already queued, then stop the thread."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    # ---- the thread --------------------------------------------------------------------
    def _loop(self) -> None:
        held = None
        while True:
            first = held if held is not None else self._queue.get()
            held = None
            if first is _STOP:
                return
            if not isinstance(first, Job):
                self._control(*first)
                continue
            jobs, size = [first], first.size
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if not isinstance(nxt, Job):
                    held = nxt  # a bank change or the stop: after this batch
                    break
                jobs.append(nxt)
                size += nxt.size
            self._run(jobs)

    @staticmethod
    def _control(fn: Callable[[], Any], future: Future) -> None:
        try:
            result = fn()
        except Exception as err:  # handed to the caller, never raised in the thread
            _settle(future, error=err)
        else:
            _settle(future, result)

    def _run(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        ready: dict[tuple, list[tuple[Job, list[Features]]]] = {}
        for job in jobs:
            if self.metrics is not None:
                self.metrics.queue_wait.observe(now - job.enqueued)
            try:
                features = self._encode(job)
            except RequestError as err:
                _settle(job.future, error=err)
                continue
            key = ("rank",) if job.method == "rank" else ("generate", job.max_new_tokens)
            ready.setdefault(key, []).append((job, features))
        for key, group in ready.items():
            self._forward(key, group)

    def _encode(self, job: Job) -> list[Features]:
        features = []
        for row, (name, text) in enumerate(job.items):
            if name not in self.model.bank:  # unloaded since the request was checked
                raise RequestError(404, f"unknown prompt {name!r}", "prompt")
            try:
                features.append(encode(self.model.adapter, name, self.model.bank[name], Example(text, ""), with_target=False))
            except SoftpromptError as err:
                raise RequestError(400, f"input {row}: {err}", f"inputs.{row}") from None
        return features

    def _forward(self, key: tuple, group: list[tuple[Job, list[Features]]]) -> None:
        features = [f for _, feats in group for f in feats]
        if self.metrics is not None:
            self.metrics.batch_examples.observe(len(features))
        try:
            if key[0] == "rank":
                candidates = [c for job, _ in group for c in job.candidates]
                results: list = rank_scores(self.model, features, candidates, self.max_batch_size, max_tokens=self.max_batch_tokens)
            else:
                ids = generate_ids(self.model, features, self.max_batch_size, key[1], max_tokens=self.max_batch_tokens)
                results = [Generated(row, generated_text(self.model, f, row), len(f.input_ids)) for f, row in zip(features, ids)]
        except Exception as err:  # noqa: BLE001 - the batch's requests get a 500; the server lives on
            log.exception("batch of %d examples failed", len(features))
            for job, _ in group:
                _settle(job.future, error=RequestError(500, f"the batch this request was in failed: {type(err).__name__}: {err}"))
            return
        start = 0
        for job, feats in group:
            _settle(job.future, results[start:start + len(feats)])
            start += len(feats)
