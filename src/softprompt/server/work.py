"""What the engine is asked to do and what it hands back: jobs, sampling settings, per-token events, results.

A job is one request: its examples, what to compute for them, its deadline, and a future the
HTTP edge awaits. Generation jobs may also carry a `sink` that receives one `TokenEvent` per new
token, from the model thread, as it is produced (streaming); results are the same either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One example: the prompt it wears, and its input as text or as token ids (OpenAI token prompts)."""

    prompt: str
    text: str | None = None
    ids: tuple[int, ...] | None = None
    param: str = "input"  # the request field it came from, named in errors


@dataclass(frozen=True)
class Sampling:
    """How to continue each example; temperature 0 is greedy decoding (what `softprompt predict` does)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None  # top alternatives per token; None: no log-probabilities


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its log-probability and the most likely alternatives at its position."""

    id: int
    text: str
    logprob: float | None
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass
class Completion:
    """One choice of one example: what was generated, why it ended, and what it read."""

    text: str
    ids: list[int]
    finish_reason: str  # "stop" (end token or a stop sequence) or "length"
    input_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # echo: each input token given what came before
    generated: int = 0  # tokens generated, an end token included (ids leave it out)


@dataclass(frozen=True)
class TokenEvent:
    """One step of one choice, as a stream sends it: new text (may be empty while a stop may be forming)."""

    choice: int
    text: str
    token: TokenLogprob | None = None
    finish_reason: str | None = None


@dataclass
class Job:
    """One request. `kind` is "rank" (score `candidates`) or "generate" (continue under `sampling`)."""

    kind: str
    items: Sequence[Item]
    candidates: Sequence[Sequence[str]] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    echo: bool = False  # generation: also score the input tokens (needs sampling.logprobs)
    strict: bool = False  # refuse an input too long for the prompt (OpenAI) instead of cutting it (predict)
    fit_max_tokens: bool = False  # max_tokens was not given: as many as the positions leave, up to sampling.max_tokens
    sink: Callable[[TokenEvent], None] | None = None
    timeout_s: float = 60.0
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    # filled on the model thread
    features: list | None = None
    prompt_logprobs: list[list[TokenLogprob | None]] | None = None

    @property
    def cost(self) -> int:
        """Examples this job puts on the queue: score candidates and generated choices each count."""
        if self.kind == "rank":
            return sum(max(1, len(c)) for c in self.candidates or [[]] * len(self.items))
        return len(self.items) * self.sampling.n

    @property
    def deadline(self) -> float:
        return self.enqueued + self.timeout_s

    def cancel(self) -> None:
        """The client went away: the engine drops the job before (or between steps of) computing it."""
        self._cancelled.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Hand a result or error to a job's future, unless its client already went away (cancelled it)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
