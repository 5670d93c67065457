"""One generated sequence, token by token: choosing the token, its log-probabilities, stop sequences, text deltas.

The engine steps many sequences at once; each keeps its own state here. Stop sequences are
matched on the decoded text at the earliest position any of them occurs (OpenAI's rule: text
"abc" with stops ["c", "bc"] ends as "a"), and generation ends there. Text that could still turn
into a stop sequence (a suffix that is the start of one) or an incomplete UTF-8 character is held
back from the stream until the next token decides it, so a stream never shows what the final
text does not contain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .work import Sampling, TokenEvent, TokenLogprob

REPLACEMENT = "\ufffd"  # what decoding shows for the first bytes of a character split across tokens


def earliest_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """The first index at which any stop sequence starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def undecided_tail(text: str, stops: tuple[str, ...]) -> int:
    """How many final characters may still change: the start of a stop sequence, or a split character."""
    tail = len(text) - len(text.rstrip(REPLACEMENT))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                tail = max(tail, k)
                break
    return tail


def sampled_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One token from a row of logits (V,): nucleus sampling at the request's temperature.

    The draw uses the sequence's own generator, so a request with a `seed` gets the same tokens
    whatever else shares its batch.
    """
    probs = (logits.float().cpu() / sampling.temperature).softmax(-1)  # (V,)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= sampling.top_p] = 0.0  # keeps the smallest set reaching top_p (the first always)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class SequenceDecoder:
    """The state of one choice being generated; `push` takes its next token and returns the event to stream."""

    def __init__(self, choice: int, sampling: Sampling, eos: int, decode: Callable[[list[int]], str]):
        self.choice, self.sampling, self.eos, self._decode = choice, sampling, eos, decode
        self.generator = None
        if sampling.temperature > 0:
            self.generator = torch.Generator()
            if sampling.seed is not None:
                self.generator.manual_seed(sampling.seed + choice)  # n choices of one seed differ, reproducibly
            else:
                self.generator.seed()
        self.ids: list[int] = []  # without the end token: what the text decodes
        self.generated = 0  # tokens generated, the end token included
        self.logprobs: list[TokenLogprob] | None = [] if sampling.logprobs is not None else None
        self.text = ""  # the final text so far (stop sequences cut)
        self.sent = 0  # characters of it already streamed
        self.finish_reason: str | None = None

    def choose(self, logits: torch.Tensor, greedy_token: int) -> int:
        return greedy_token if self.generator is None else sampled_token(logits, self.sampling, self.generator)

    def push(self, token: int, logprob: TokenLogprob | None) -> TokenEvent:
        """Take the next token; ends the sequence at the end token, a stop sequence or max_tokens."""
        self.generated += 1  # the end token counts (usage) and keeps its log-probability, as OpenAI's do
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        if token == self.eos:
            self.finish_reason = "stop"
            return self._event(self.text, logprob)
        self.ids.append(token)
        full = self._decode(self.ids)
        cut = earliest_stop(full, self.sampling.stop)
        if cut is not None:
            self.finish_reason = "stop"
            self.text = full[:cut]
            return self._event(self.text, logprob)
        self.text = full
        if len(self.ids) >= self.sampling.max_tokens:
            self.finish_reason = "length"
            return self._event(full, logprob)
        return self._event(full[: len(full) - undecided_tail(full, self.sampling.stop)], logprob)

    def _event(self, visible: str, logprob: TokenLogprob | None) -> TokenEvent:
        delta = visible[self.sent:] if len(visible) > self.sent else ""
        self.sent = max(self.sent, len(visible))
        return TokenEvent(self.choice, delta, logprob, self.finish_reason)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def step_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int, token_text: Callable[[int], str]
                  ) -> list[TokenLogprob]:
    """Each row's chosen token (b,) with its log-probability under the model and the `top` alternatives."""
    logprobs = logits.float().log_softmax(-1)  # (b, V)
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()  # (b,)
    values, ids = logprobs.topk(max(top, 1), -1)  # (b, top)
    rows = []
    for row, (token, value) in enumerate(zip(tokens.tolist(), chosen)):
        alternatives = tuple((i, token_text(i), v) for i, v in zip(ids[row, :top].tolist(), values[row, :top].tolist()))
        rows.append(TokenLogprob(token, token_text(token), value, alternatives))
    return rows
