"""Generation on the engine's thread: sequences started together form a cohort; every turn steps each one token.

A cohort is one decode state (backbones/base.py `DecodeState`) with one row per sequence (an
example's choice). Finished, cancelled and timed-out rows leave it between steps; on a
decoder-only backbone a new cohort is merged into the running one, so one forward steps every
sequence. A decode step that fails cannot be split (the cache may be half-updated): that
cohort's jobs fail, and the engine goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from ..data import Features, collate
from ..device import to_device
from ..errors import SoftpromptError
from ..model import PromptedModel
from .decoding import SequenceDecoder, step_logprobs
from .errors import BatchFailed, Cancelled, DeadlineExceeded, EngineError, InvalidInput
from .metrics import ServerMetrics
from .tokenising import Tokeniser
from .work import Completion, Job, TokenLogprob, settle

log = logging.getLogger("softprompt.server")


class Cohort:
    """Sequences that started generating together: one decode state, one row per sequence."""

    def __init__(self, state, logits: torch.Tensor, rows: list[tuple[Job, SequenceDecoder]]):
        self.state, self.logits, self.rows = state, logits, rows

    def keep(self, keep: list[int]) -> None:
        if keep and len(keep) < len(self.rows):
            self.state.select(torch.tensor(keep, dtype=torch.long, device=self.logits.device))
            self.logits = self.logits[keep]
            self.rows = [self.rows[i] for i in keep]


class Generations:
    """The running cohorts; `start` prefills a group of jobs, `step_all` advances every cohort by one token."""

    def __init__(self, model: PromptedModel, metrics: ServerMetrics, tokeniser: Tokeniser,
                 fail: Callable[[Job, EngineError], None], observe: Callable[[str, float, int], None]):
        self.model, self.metrics, self.tokeniser, self.fail, self.observe = model, metrics, tokeniser, fail, observe
        self.cohorts: list[Cohort] = []

    @property
    def running(self) -> int:
        return sum(len(c.rows) for c in list(self.cohorts))

    def jobs(self) -> list[Job]:
        return list({id(j): j for c in self.cohorts for j, _ in c.rows}.values())

    def start(self, group: list[tuple[Job, list[Features]]]) -> None:
        cohort = self.prefill(group)
        if cohort is not None:
            self.cohorts.append(cohort)
            self.merge()

    def step_all(self) -> None:
        for cohort in list(self.cohorts):
            self.step(cohort)

    def merge(self) -> None:
        """All running cohorts as one batch where the backbone can (decoder-only): one forward per step for all."""
        if len(self.cohorts) < 2:
            return
        state = self.model.adapter.merge_decode([c.state for c in self.cohorts])
        if state is None:
            return
        logits = torch.cat([c.logits for c in self.cohorts])  # (rows, V)
        rows = [row for c in self.cohorts for row in c.rows]
        self.cohorts = [Cohort(state, logits, rows)]

    @torch.no_grad()
    def prefill(self, group: list[tuple[Job, list[Features]]]) -> Cohort | None:
        """Read every input once; expand to one row per choice; settle echo-only jobs (max_tokens 0)."""
        adapter, eos = self.model.adapter, self.model.adapter.tokenizer.eos_token_id
        for job, feats in group:
            if job.echo and job.sampling.logprobs is not None:
                job.prompt_logprobs = self._input_logprobs(feats, job.sampling.logprobs)
        generating = [(job, feats) for job, feats in group if job.sampling.max_tokens > 0]
        for job, feats in group:
            if job.sampling.max_tokens == 0:
                settle(job.future, self._completions(job, feats, [None] * (len(feats) * job.sampling.n)))
        if not generating:
            return None
        features = [f for _, feats in generating for f in feats]
        start = time.perf_counter()
        batch = to_device(collate(adapter, features, with_labels=False), self.model.device)
        state, logits = adapter.begin_decode(self.model.bank.gather(batch["prompts"], self.model.device), batch)  # (b, V)
        self.observe("prefill", start, len(features))
        self.metrics.prompt_tokens.inc(sum(len(f.input_ids) for f in features))
        expand, rows, at = [], [], 0
        for job, feats in generating:
            job.features = feats
            for example in range(len(feats)):
                for j in range(job.sampling.n):
                    expand.append(at + example)
                    rows.append((job, SequenceDecoder(example * job.sampling.n + j, job.sampling, eos, self._decode)))
            at += len(feats)
        index = torch.tensor(expand, dtype=torch.long, device=logits.device)
        if len(expand) != len(features) or expand != list(range(len(features))):
            state.select(index)  # (b, ...) -> (rows, ...): one row per choice
            logits = logits[index]
        return Cohort(state, logits, rows)

    def _decode(self, ids: list[int]) -> str:
        return self.model.adapter.tokenizer.decode(ids, skip_special_tokens=True)

    def _input_logprobs(self, features: list[Features], top: int) -> list[list[TokenLogprob | None]]:
        batch = to_device(collate(self.model.adapter, features, with_labels=False), self.model.device)
        try:
            chosen, values, ids = self.model.adapter.input_logprobs(self.model.bank.gather(batch["prompts"], self.model.device),
                                                                    batch, top)
        except SoftpromptError as err:
            raise InvalidInput(f"field 'echo': {err}", "echo") from None
        out = []
        n = batch["input_ids"].shape[1]
        for row, feature in enumerate(features):
            first = n - len(feature.input_ids)  # left padding: the real tokens are the last columns
            entries: list[TokenLogprob | None] = []
            for col in range(first, n):
                value = float(chosen[row, col])
                token = int(batch["input_ids"][row, col])
                alternatives = tuple((int(i), self.tokeniser.token_text(int(i)), float(v)) for i, v in zip(ids[row, col], values[row, col]))
                entries.append(TokenLogprob(token, self.tokeniser.token_text(token), None if math.isnan(value) else value, alternatives))
            out.append(entries)
        return out

    @torch.no_grad()
    def step(self, cohort: Cohort) -> None:
        """Choose each running sequence's next token, stream it, drop what finished, and run one decode step."""
        now = time.monotonic()
        for job in {id(j): j for j, _ in cohort.rows}.values():
            if job.cancelled or now > job.deadline:
                self.fail(job, Cancelled("client went away") if job.cancelled
                           else DeadlineExceeded(f"not finished within the request timeout ({job.timeout_s:g} s)"))
        try:
            keep = self._choose(cohort)
            self._finish_jobs(cohort)
            cohort.keep(keep)
            if not keep:
                self.cohorts.remove(cohort)
                return
            tokens = torch.tensor([seq.ids[-1] for _, seq in cohort.rows], device=cohort.logits.device)
            start = time.perf_counter()
            cohort.logits = self.model.adapter.decode_step(cohort.state, tokens)  # (rows, V)
            self.metrics.forward_seconds.labels("decode").observe(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - a cache half-updated cannot be split: the cohort's jobs fail
            log.exception("decode step of %d sequences failed", len(cohort.rows))
            for job in {id(j): j for j, _ in cohort.rows}.values():
                self.fail(job, BatchFailed(f"generation failed: {type(err).__name__}: {err}"))
            self.cohorts.remove(cohort)

    def _choose(self, cohort: Cohort) -> list[int]:
        """Push the next token into every live sequence; returns the rows still generating."""
        logits = cohort.logits
        greedy = logits.argmax(-1).tolist()  # (rows,)
        live = [row for row, (job, seq) in enumerate(cohort.rows) if not job.future.done() and not seq.done]
        chosen = {row: cohort.rows[row][1].choose(logits[row], greedy[row]) for row in live}
        tops = [cohort.rows[row][1].sampling.logprobs for row in live if cohort.rows[row][1].sampling.logprobs is not None]
        logprobs: dict[int, TokenLogprob] = {}
        if tops:
            rows = torch.tensor(live, device=logits.device)
            tokens = torch.tensor([chosen[r] for r in live], device=logits.device)
            logprobs = dict(zip(live, step_logprobs(logits[rows], tokens, max(tops), self.tokeniser.token_text)))
        keep = []
        for row in live:
            job, seq = cohort.rows[row]
            first = not seq.ids and seq.finish_reason is None
            entry = logprobs.get(row)
            if entry is not None and seq.sampling.logprobs is not None:
                entry = TokenLogprob(entry.id, entry.text, entry.logprob, entry.top[: seq.sampling.logprobs])
            event = seq.push(chosen[row], entry)
            if first and seq.choice == 0:
                self.metrics.ttft.observe(time.monotonic() - job.enqueued)
            self.metrics.generated_tokens.inc()
            if job.sink is not None:
                try:
                    job.sink(event)
                except Exception:  # noqa: BLE001 - a broken stream ends that request, not the engine
                    log.exception("stream sink failed")
                    job.cancel()
            if not seq.done:
                keep.append(row)
        return keep

    def _finish_jobs(self, cohort: Cohort) -> None:
        for job in {id(j): j for j, _ in cohort.rows}.values():
            if job.future.done():
                continue
            seqs = [seq for j, seq in cohort.rows if j is job]
            if all(seq.done for seq in seqs):
                settle(job.future, self._completions(job, job.features, seqs))

    def _completions(self, job: Job, features: list[Features], seqs: list[SequenceDecoder | None]) -> list[Completion]:
        """One completion per (example, choice), in that order."""
        prompt_logprobs = job.prompt_logprobs
        out = []
        for k, seq in enumerate(seqs):
            example = k // job.sampling.n
            out.append(Completion(
                text=seq.text if seq else "", ids=seq.ids if seq else [], finish_reason=seq.finish_reason if seq else "length",
                input_ids=features[example].input_ids, logprobs=seq.logprobs if seq else ([] if job.sampling.logprobs is not None else None),
                prompt_logprobs=prompt_logprobs[example] if prompt_logprobs else None,
                generated=seq.generated if seq else 0))
        return out

