"""The server's engine without HTTP: results equal predict, one bad request fails alone, backpressure, deadlines,
cancellation, step-level interleaving, sampling, stop sequences and per-token events, health."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import torch

from conftest import tiny_adapter
from softprompt.data import encode
from softprompt.evaluate import predict, rank_scores
from softprompt.model import PromptedModel
from softprompt.prompt_io import PromptMetadata
from softprompt.server import engine as engine_module
from softprompt.server.decoding import SequenceDecoder, earliest_stop, undecided_tail
from softprompt.server.engine import Engine, EngineSettings
from softprompt.server.errors import BatchFailed, Cancelled, ContextTooLong, DeadlineExceeded, InvalidInput, Overloaded
from softprompt.server.memory import trimmer
from softprompt.server.work import Item, Job, Sampling
from softprompt.tasks.base import Example

LABELS = ["negative", "positive"]
TEXTS = ["sentence: a gripping , funny film .", "sentence: dull", "sentence: it rains and rains"]


def prompted(kind: str) -> PromptedModel:
    adapter = tiny_adapter(kind)
    model = PromptedModel(adapter).eval()
    for seed, name in enumerate(("a", "b")):
        weight = torch.randn(4 + seed, adapter.width, generator=torch.Generator().manual_seed(seed))
        model.add_prompt(name, weight, PromptMetadata(4 + seed, adapter.width, "random-uniform", task="sst2", labels=LABELS,
                                                      max_target_length=8))
    return model


@pytest.fixture(scope="module", params=["t5", "llama"])
def model(request):
    return prompted(request.param)


@pytest.fixture
def engine(model):
    e = Engine(model, EngineSettings(max_wait_s=0.01))
    yield e
    e.close(5)


def rank_job(prompt: str, texts, **fields) -> Job:
    return Job("rank", [Item(prompt, t) for t in texts], candidates=[LABELS] * len(texts), **fields)


def gen_job(prompt: str, texts, **sampling) -> Job:
    return Job("generate", [Item(prompt, t) for t in texts], sampling=Sampling(**sampling))


def blocked(engine: Engine) -> threading.Event:
    """Hold the model thread (a control waiting on an event) so jobs queue up behind it."""
    release = threading.Event()
    engine.call(lambda: release.wait(30))
    return release


def test_results_equal_predict_and_rank_scores(engine, model):
    ranks = engine.submit(rank_job("a", TEXTS))
    gens = engine.submit(gen_job("b", TEXTS, max_tokens=5))
    got_ranks, got_gens = ranks.result(60), gens.result(60)  # the reference runs after: one thread on the model at a time
    features = [encode(model.adapter, "a", model.bank["a"], Example(t, ""), with_target=False) for t in TEXTS]
    expected_ranks = rank_scores(model, features, [LABELS] * 3, 8)
    assert [s for row in got_ranks for s in row] == pytest.approx([s for row in expected_ranks for s in row], abs=1e-4)
    expected = predict(model, [("b", t) for t in TEXTS], "generate", max_new_tokens=5)
    assert [c.text.strip() for c in got_gens] == expected


def test_untokenisable_input_fails_alone_and_the_engine_lives_on(engine):
    good = engine.submit(rank_job("a", TEXTS[:1]))
    bad = engine.submit(rank_job("a", ["\ud800"]))  # a lone UTF-16 surrogate: the Rust tokenizer raises
    bad_gen = engine.submit(gen_job("a", ["\ud800"], max_tokens=3))
    assert len(good.result(60)) == 1
    for future in (bad, bad_gen):
        error = future.exception(60)
        assert isinstance(error, InvalidInput) and error.param == "input"
    assert engine.alive and len(engine.submit(rank_job("b", TEXTS[:1])).result(60)) == 1


def test_a_failing_job_is_found_by_halving_and_fails_alone(model, monkeypatch):
    original = type(model.adapter).score

    def score(self, prompts, batch, *args):  # fault injection: any forward that holds prompt "b" breaks
        if "poison" in batch["input_ids_text"]:
            raise RuntimeError("device fault")
        return original(self, prompts, batch, *args)

    seen = []
    real_collate = type(model.adapter).collate

    def collate(self, inputs, targets):
        out = real_collate(self, inputs, targets)
        out["input_ids_text"] = " ".join(self.tokenizer.decode(i) for i in inputs)
        seen.append(len(inputs))
        return out

    monkeypatch.setattr(type(model.adapter), "score", score)
    monkeypatch.setattr(type(model.adapter), "collate", collate)
    engine = Engine(model, EngineSettings(max_wait_s=0.2))
    try:
        release = blocked(engine)
        futures = [engine.submit(rank_job("a", [t])) for t in TEXTS] + [engine.submit(rank_job("a", ["sentence: poison"]))]
        release.set()
        for future in futures[:3]:
            assert len(future.result(60)) == 1
        error = futures[3].exception(60)
        assert isinstance(error, BatchFailed) and "device fault" in error.message
        assert max(seen) == 4 and 1 in seen  # all four in one forward first, then halves down to the culprit
    finally:
        engine.close(5)


def test_the_queue_is_bounded_in_examples_counting_candidates(model):
    engine = Engine(model, EngineSettings(max_queued=10))
    try:
        release = blocked(engine)
        first = engine.submit(Job("rank", [Item("a", TEXTS[0])], candidates=[["x"] * 8]))  # 8 candidate rows
        with pytest.raises(Overloaded) as refused:
            engine.submit(rank_job("a", TEXTS[:2]))  # 2 examples x 2 candidates: 12 > 10
        assert refused.value.retry_after >= 1
        assert engine.health()["queued_examples"] == 8
        release.set()
        assert len(first.result(60)[0]) == 8
        assert len(engine.submit(rank_job("a", TEXTS[:2])).result(60)) == 2
    finally:
        engine.close(5)


def test_deadlines_and_cancelled_jobs_are_dropped_before_computing(model):
    engine = Engine(model, EngineSettings())
    try:
        release = blocked(engine)
        late = engine.submit(rank_job("a", TEXTS[:1], timeout_s=0.05))
        gone_job = gen_job("a", TEXTS[:1], max_tokens=3)
        gone = engine.submit(gone_job)
        gone_job.cancel()
        time.sleep(0.2)
        before = engine.metrics.batch_examples._sum.get()
        release.set()
        assert isinstance(late.exception(60), DeadlineExceeded)
        assert gone.cancelled()
        engine.submit(rank_job("a", TEXTS[:1])).result(60)
        assert engine.metrics.batch_examples._sum.get() - before == 1  # only the last job was computed
    finally:
        engine.close(5)


def test_rank_requests_are_served_between_steps_of_a_long_generation(model):
    engine = Engine(model, EngineSettings(max_wait_s=0.0))
    try:
        steps = []
        long = Job("generate", [Item("a", TEXTS[0])], sampling=Sampling(max_tokens=60, stop=("\x00never",)),
                   sink=lambda event: steps.append(time.monotonic()))
        long.sampling = Sampling(max_tokens=60, stop=("\x00never",))
        future = engine.submit(long)
        while len(steps) < 3 and not future.done():
            time.sleep(0.005)
        short = engine.submit(rank_job("b", TEXTS[:1]))
        short.result(60)
        done_short = time.monotonic()
        result = future.result(60)[0]
        if result.finish_reason == "length":  # the tiny model did not end by itself: the rank job came first
            assert done_short < steps[-1]
            assert sum(t <= done_short for t in steps) < len(steps)
    finally:
        engine.close(5)


def test_new_generations_join_while_others_run_and_answer_as_alone(model):
    engine = Engine(model, EngineSettings(max_wait_s=0.0))
    try:
        events, cohorts = [], []

        def long_sink(event):
            events.append(("long", time.monotonic()))
            cohorts.append(len(engine.generations.cohorts))

        long = engine.submit(Job("generate", [Item("a", TEXTS[0])], sampling=Sampling(max_tokens=40), sink=long_sink))
        while len(events) < 2 and not long.done():
            time.sleep(0.005)
        short = engine.submit(Job("generate", [Item("b", TEXTS[1]), Item("a", TEXTS[2])], sampling=Sampling(max_tokens=6),
                                  sink=lambda e: events.append(("short", time.monotonic()))))
        short_result, long_result = short.result(60), long.result(60)[0]
        if long_result.finish_reason == "length":
            assert max(t for who, t in events if who == "short") < max(t for who, t in events if who == "long")
        if model.adapter.kind == "decoder-only" and long_result.finish_reason == "length":
            assert max(cohorts) == 1  # merged: one batch for every running sequence
        expected_short = predict(model, [("b", TEXTS[1]), ("a", TEXTS[2])], "generate", max_new_tokens=6)
        assert [c.text.strip() for c in short_result] == expected_short
        assert long_result.text.strip() == predict(model, [("a", TEXTS[0])], "generate", max_new_tokens=40)[0]
    finally:
        engine.close(5)


def test_sampling_is_reproducible_with_a_seed_and_n_choices_differ(engine):
    settings = dict(max_tokens=8, temperature=2.0, seed=11, n=3)
    first = engine.submit(gen_job("a", TEXTS[:1], **settings)).result(60)
    second = engine.submit(gen_job("a", TEXTS[:1], **settings)).result(60)
    assert [c.ids for c in first] == [c.ids for c in second] and len(first) == 3
    assert len({tuple(c.ids) for c in first}) > 1
    other = engine.submit(gen_job("a", TEXTS[:1], **(settings | {"seed": 12}))).result(60)
    assert [c.ids for c in other] != [c.ids for c in first]


def test_events_concatenate_to_the_text_and_carry_logprobs(engine):
    events = []
    job = Job("generate", [Item("a", TEXTS[0])], sampling=Sampling(max_tokens=6, logprobs=2), sink=events.append)
    (result,) = engine.submit(job).result(60)
    assert "".join(e.text for e in events) == result.text
    assert events[-1].finish_reason == result.finish_reason and all(e.finish_reason is None for e in events[:-1])
    assert len(result.logprobs) == len(result.ids)
    for entry in result.logprobs:  # greedy: the chosen token is the most likely one
        assert len(entry.top) == 2 and entry.logprob == pytest.approx(max(v for _, _, v in entry.top), abs=1e-5)


def test_context_length_is_checked_with_the_new_tokens(engine, model):
    huge = 10 ** 6 if model.adapter.kind == "decoder-only" else 0
    if not huge:
        pytest.skip("an encoder-decoder's decoder positions are relative: only the encoder is bounded")
    job = Job("generate", [Item("a", TEXTS[0], param="prompt")], sampling=Sampling(max_tokens=model.adapter.max_positions), strict=True)
    error = engine.submit(job).exception(60)
    assert isinstance(error, ContextTooLong) and str(model.adapter.max_positions) in error.message and error.param == "prompt"


def test_health_reports_a_stuck_thread_and_a_stopped_one(model):
    engine = Engine(model, EngineSettings(stuck_seconds=0.3))
    release = blocked(engine)
    engine.submit(rank_job("a", TEXTS[:1]))
    time.sleep(0.6)
    health = engine.health()
    assert health["stuck"] and health["queued_examples"] == 2 and health["oldest_job_age_s"] >= 0.5
    release.set()
    time.sleep(0.3)
    assert not engine.health()["stuck"]
    engine.close(5)
    assert not engine.health()["alive"]


def test_close_drains_then_fails_what_is_left(model):
    engine = Engine(model, EngineSettings())
    release = blocked(engine)
    queued = engine.submit(rank_job("a", TEXTS[:1]))
    threading.Timer(0.2, release.set).start()
    engine.close(10)
    assert len(queued.result(1)) == 1  # drained
    from softprompt.server.errors import ShuttingDown

    with pytest.raises(ShuttingDown):
        engine.submit(rank_job("a", TEXTS[:1]))


def test_finished_generations_leave_no_decode_state_or_cache_alive(model, monkeypatch):
    """Issue 26's soak: resident memory grew, yet nothing of a finished generation may stay referenced (jobs,
    cohorts, events, errors): every decode state and its cache is collectable once its jobs are settled."""
    states = []
    begin = model.adapter.begin_decode

    def recorded(prompts, batch):
        state, logits = begin(prompts, batch)
        states.append((weakref.ref(state), weakref.ref(state.cache)))
        return state, logits

    monkeypatch.setattr(model.adapter, "begin_decode", recorded)
    engine = Engine(model, EngineSettings(max_wait_s=0.0))
    try:
        first = engine.submit(gen_job("a", TEXTS, max_tokens=6))
        events = []
        streamed = engine.submit(Job("generate", [Item("b", TEXTS[0])], sampling=Sampling(max_tokens=4, n=2, logprobs=1),
                                     sink=events.append))
        late = gen_job("b", TEXTS[:1], max_tokens=30)
        late.cancel()  # dropped before it starts, or between steps
        engine.submit(late)
        first.result(60), streamed.result(60)
        engine.submit(rank_job("a", TEXTS[:1])).result(60)  # a later turn: the finished cohorts are gone by now
        assert engine.generations.cohorts == []
        gc.collect()
        assert states and all(state() is None and cache() is None for state, cache in states)
    finally:
        engine.close(5)


def test_the_engine_hands_freed_memory_back_after_work(model, monkeypatch):
    trims = threading.Event()
    monkeypatch.setattr(engine_module, "trimmer", lambda: trims.set)
    engine = Engine(model, EngineSettings(max_wait_s=0.0, trim_every_s=0.01))
    try:
        engine.submit(gen_job("a", TEXTS[:1], max_tokens=3)).result(60)
        assert trims.wait(30)  # also when the engine is idle after the work
        assert engine.metrics.trim_seconds.collect()[0].samples  # timed in /metrics
    finally:
        engine.close(5)
    never = Engine(model, EngineSettings(trim_every_s=0))
    never.close(5)
    assert never._trim is None


def test_the_memory_trimmer_runs_where_the_c_library_has_one():
    release = trimmer()
    if release is None:
        pytest.skip("no malloc_trim in this C library")
    release()  # returns nothing, raises nothing


def test_stops_cut_at_the_earliest_match():
    assert earliest_stop("abc", ("c", "bc")) == 1
    assert earliest_stop("abc", ("x",)) is None
    assert undecided_tail("hello wor", ("world",)) == 3
    assert undecided_tail("abc\ufffd", ()) == 1
    pieces = {1: "a", 2: "b", 3: "c"}
    seq = SequenceDecoder(0, Sampling(max_tokens=10, stop=("c", "bc")), eos=0, decode=lambda ids: "".join(pieces[i] for i in ids))
    sent = [seq.push(t, None).text for t in (1, 2, 3)]
    assert seq.text == "a" and seq.finish_reason == "stop" and "".join(sent) == "a"


def test_cancelled_future_is_not_a_cancelled_error_type():
    assert Cancelled("x").kind == "cancelled"
