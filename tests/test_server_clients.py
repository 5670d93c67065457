"""Real clients against `softprompt serve`'s app: the OpenAI SDK, lm-evaluation-harness, schemathesis.

The app is served by uvicorn on 127.0.0.1 in a background thread, with `softprompt serve`'s
protocol and limits; the backbone is a tiny random GPT-2 (the real GPT-2 vocabulary, 512
positions) saved to a folder, wearing one random SST-2 prompt.
Every answer is compared with the library computing the same thing directly (`predict`,
`rank_scores`, `evaluate`), so "the client works" means "the client gets the library's numbers".

Each test is bounded: every client call has a timeout, the server thread starts and stops within
a deadline, and the fuzzing runs a fixed number of examples.
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_backbone
from softprompt.data import encode, target_ids
from softprompt.evaluate import evaluate, predict, rank_scores
from softprompt.model import load_prompted_model
from softprompt.prompt_io import PromptMetadata, save_prompt
from softprompt.server import head_timeout_protocol
from softprompt.server.app import create_app
from softprompt.server.config import ServeConfig
from softprompt.server.prompts import load_server_model
from softprompt.tasks import get_task, load_examples
from softprompt.tasks.base import Example

openai = pytest.importorskip("openai")

PROMPT, LABELS, LENGTH = "sst2", ["negative", "positive"], 5
TEXTS = ["sentence: a gripping , funny film .", "sentence: dull", "sentence: it 's a charming and often affecting journey ."]
TIMEOUT_S = 60  # any one client call
ADMIN_TOKEN = "clients-admin-token"


def save_served(root: Path, model, tokenizer) -> Path:
    """`root/backbone` (the model in Hugging Face format) and `root/prompts/sst2` (a random prompt for it)."""
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    adapter = load_server_model(ServeConfig(prompts=str(root / "prompts"), model=str(root / "backbone")))[0].adapter
    weight = torch.randn(LENGTH, adapter.width, generator=torch.Generator().manual_seed(0))
    save_prompt(root / "prompts" / PROMPT, weight, PromptMetadata(
        LENGTH, adapter.width, "random-uniform", task=PROMPT, labels=LABELS, backbone=str(root / "backbone"),
        backbone_kind=adapter.kind, backbone_fingerprint=adapter.fingerprint(), max_target_length=8))
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return save_served(tmp_path_factory.mktemp("clients-gpt2"), *tiny_backbone("gpt2"))


def serve_config(root: Path, **settings) -> ServeConfig:
    return ServeConfig(prompts=str(root / "prompts"), model=str(root / "backbone"), request_timeout_s=TIMEOUT_S, **settings)


@contextlib.contextmanager
def running(config: ServeConfig):
    """The app under uvicorn on 127.0.0.1 and a free port, in a thread, with `serve`'s protocol and limits; yields its URL."""
    import uvicorn

    model, directory = load_server_model(config)
    app = create_app(model, directory, config)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=head_timeout_protocol(config.header_timeout_s),
                                           limit_concurrency=config.limit_concurrency, timeout_graceful_shutdown=5,
                                           timeout_keep_alive=max(1, int(config.header_timeout_s))))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def live(served):
    with running(serve_config(served)) as url:
        yield url


@pytest.fixture(scope="module")
def api(live):
    with openai.OpenAI(base_url=f"{live}/v1", api_key="x", timeout=TIMEOUT_S, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def reference(served):
    """The model `softprompt predict` / `eval` build for the same prompt."""
    return load_prompted_model([f"{PROMPT}={served / 'prompts' / PROMPT}"], str(served / "backbone")).eval()


def features_of(reference, text: str):
    return encode(reference.adapter, PROMPT, reference.bank[PROMPT], Example(text, ""), with_target=False)


# ---- the OpenAI SDK ---------------------------------------------------------------------------
def test_completions_equal_predict_for_texts_lists_and_token_ids(api, reference):
    expected = predict(reference, [(PROMPT, t) for t in TEXTS], "generate", max_new_tokens=6)
    one = api.completions.create(model=PROMPT, prompt=TEXTS[0], max_tokens=6)
    assert one.choices[0].text.strip() == expected[0]  # predict strips; completions give the raw text
    many = api.completions.create(model=PROMPT, prompt=TEXTS, max_tokens=6)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text.strip() for c in many.choices] == expected
    ids = [features_of(reference, t).input_ids for t in TEXTS]
    tokens = api.completions.create(model=PROMPT, prompt=ids, max_tokens=6)
    assert [c.text for c in tokens.choices] == [c.text for c in many.choices]
    assert api.completions.create(model=PROMPT, prompt=ids[1], max_tokens=6).choices[0].text == many.choices[1].text
    assert many.usage.prompt_tokens == sum(map(len, ids))
    assert many.usage.total_tokens == many.usage.prompt_tokens + many.usage.completion_tokens
    assert all(c.finish_reason in ("stop", "length") for c in many.choices)


def test_a_one_message_chat_is_the_completion_of_its_text(api):
    chat = api.chat.completions.create(model=PROMPT, messages=[{"role": "user", "content": TEXTS[2]}], max_tokens=6)
    completion = api.completions.create(model=PROMPT, prompt=TEXTS[2], max_tokens=6)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == completion.choices[0].text
    assert chat.choices[0].finish_reason == completion.choices[0].finish_reason
    assert chat.usage.model_dump() == completion.usage.model_dump()


def test_streams_concatenate_to_the_whole_answer(api):
    whole = api.completions.create(model=PROMPT, prompt=TEXTS[:2], max_tokens=8)
    pieces, usage, finished = {0: "", 1: ""}, None, {}
    for chunk in api.completions.create(model=PROMPT, prompt=TEXTS[:2], max_tokens=8, stream=True,
                                        stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces[choice.index] += choice.text
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert pieces == {c.index: c.text for c in whole.choices}
    assert finished == {c.index: c.finish_reason for c in whole.choices}
    assert usage is not None and usage.model_dump() == whole.usage.model_dump()

    messages = [{"role": "user", "content": TEXTS[0]}]
    answer = api.chat.completions.create(model=PROMPT, messages=messages, max_tokens=8)
    chunks = list(api.chat.completions.create(model=PROMPT, messages=messages, max_tokens=8, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [answer.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == answer.usage.model_dump()


def test_an_echoed_stream_with_logprobs_carries_the_same_logprobs(api):
    """Streamed chunks' logprobs, concatenated, are the whole answer's: the prompt's tokens, then the new ones."""
    kwargs = dict(model=PROMPT, prompt=TEXTS[0], max_tokens=3, echo=True, logprobs=1)
    whole = api.completions.create(**kwargs).choices[0]
    text, tokens, values, offsets = "", [], [], []
    for chunk in api.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                values += choice.logprobs.token_logprobs
                offsets += choice.logprobs.text_offset
    assert text == whole.text and text.startswith(TEXTS[0])
    assert tokens == whole.logprobs.tokens and offsets == whole.logprobs.text_offset
    assert values == pytest.approx(whole.logprobs.token_logprobs, abs=1e-5)


def test_completion_and_chat_logprobs_describe_the_greedy_tokens(api):
    completion = api.completions.create(model=PROMPT, prompt=TEXTS[0], max_tokens=6, logprobs=3)
    choice = completion.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == completion.usage.completion_tokens
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    if "\ufffd" not in "".join(lp.tokens):  # a character split across tokens shows as U+FFFD in each token alone
        assert "".join(lp.tokens) == choice.text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert (len(top) == 3 or "\ufffd" in "".join(top)) and value < 0  # alternatives that decode alike share a key
        assert top[token] == value == max(top.values())  # greedy: the chosen token is the most likely one

    chat = api.chat.completions.create(model=PROMPT, messages=[{"role": "user", "content": TEXTS[0]}], max_tokens=6,
                                       logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert [t.token for t in content] == lp.tokens
    for entry, value in zip(content, lp.token_logprobs):
        assert entry.logprob == pytest.approx(value, abs=1e-5)
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob == max(t.logprob for t in entry.top_logprobs)


def test_echoed_logprobs_of_a_candidate_equal_rank_scores(api, reference):
    """lm-eval's loglikelihood request (echo, logprobs, max_tokens 0 or 1) scores a candidate as rank classification does."""
    record = reference.bank[PROMPT]
    for text in TEXTS[:2]:
        feature = features_of(reference, text)
        expected = rank_scores(reference, [feature], [LABELS], 8)[0]
        for label, score in zip(LABELS, expected):
            target = target_ids(reference.adapter, record, label)  # " positive" + the end token, as training sees it
            prompt = feature.input_ids + target
            echo = api.completions.create(model=PROMPT, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
            lp = echo.choices[0].logprobs
            assert echo.choices[0].text == reference.adapter.tokenizer.decode(prompt)
            assert len(lp.token_logprobs) == len(prompt) and None not in lp.token_logprobs  # the prompt predicts token 0
            assert sum(lp.token_logprobs[-len(target):]) == pytest.approx(score, abs=1e-3)
            assert all(len(top) == 1 for top in lp.top_logprobs)
            assert echo.usage.completion_tokens == 0 and echo.usage.prompt_tokens == len(prompt)

            plus_one = api.completions.create(model=PROMPT, prompt=prompt, max_tokens=1, echo=True, logprobs=1)
            more = plus_one.choices[0].logprobs
            assert plus_one.choices[0].finish_reason == "length"  # (an end token here: see the xfail test below)
            assert len(more.token_logprobs) == len(prompt) + 1
            assert more.token_logprobs[:-1] == pytest.approx(lp.token_logprobs, abs=1e-4)
            assert sum(more.token_logprobs[len(feature.input_ids):-1]) == pytest.approx(score, abs=1e-3)  # lm-eval's slice


def test_seeded_sampling_repeats_and_n_gives_that_many_choices(api):
    def sample(**kwargs):
        return api.completions.create(model=PROMPT, prompt=TEXTS[0], max_tokens=8, temperature=0.8, seed=7, **kwargs)

    assert sample().choices[0].text == sample().choices[0].text
    three = sample(n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.text for c in three.choices}) > 1  # each choice draws its own tokens
    assert [c.text for c in three.choices] == [c.text for c in sample(n=3).choices]
    assert three.usage.prompt_tokens == sample().usage.prompt_tokens  # the input counts once, not per choice


def test_stop_sequences_cut_at_the_earliest_match(api):
    greedy = api.completions.create(model=PROMPT, prompt=TEXTS[1], max_tokens=12).choices[0].text
    third = len(greedy) // 3
    late, early = greedy[2 * third: 2 * third + 3], greedy[third: third + 2]  # the later one listed first
    cut = min(greedy.find(late), greedy.find(early))
    assert 0 <= cut <= third
    stopped = api.completions.create(model=PROMPT, prompt=TEXTS[1], max_tokens=12, stop=[late, early])
    assert stopped.choices[0].text == greedy[:cut] and stopped.choices[0].finish_reason == "stop"
    streamed = api.completions.create(model=PROMPT, prompt=TEXTS[1], max_tokens=12, stop=[late, early], stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == greedy[:cut]  # held back, never shown then taken back
    chat = api.chat.completions.create(model=PROMPT, messages=[{"role": "user", "content": TEXTS[1]}], max_tokens=12, stop=early)
    assert chat.choices[0].message.content == greedy[: greedy.find(early)]


def test_a_request_past_the_context_gets_a_400_naming_the_maximum(api):
    positions = 512  # tiny gpt2's n_positions; the prompt takes LENGTH of them
    ids = [11] * (positions - LENGTH - 4)
    fits = api.completions.create(model=PROMPT, prompt=ids, max_tokens=4)
    assert fits.usage.completion_tokens <= 4
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model=PROMPT, prompt=ids, max_tokens=5)
    assert f"maximum context length is {positions} tokens" in caught.value.message
    assert caught.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        api.chat.completions.create(model=PROMPT, messages=[{"role": "user", "content": "sentence: fine " * 300}], max_tokens=8)


def test_models_are_the_prompts(api):
    assert api.models.retrieve(PROMPT).id == PROMPT
    assert PROMPT in [m.id for m in api.models.list()]
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        api.models.retrieve("no-such-prompt")


def test_a_generated_end_token_keeps_its_logprob(tmp_path):
    """A backbone whose end token is the greedy choice almost everywhere (its tied embedding row scaled by -100)."""
    model, tokenizer = tiny_backbone("gpt2")
    with torch.no_grad():
        model.transformer.wte.weight[tokenizer.eos_token_id] *= -100
    root = save_served(tmp_path, model, tokenizer)
    with running(serve_config(root)) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", timeout=TIMEOUT_S,
                                                           max_retries=0) as client:
        ids = tokenizer("sentence: word1").input_ids
        answer = client.completions.create(model=PROMPT, prompt=ids, max_tokens=1, echo=True, logprobs=1).choices[0]
        assert answer.finish_reason == "stop" and answer.text == "sentence: word1"  # the end token was chosen
        assert len(answer.logprobs.token_logprobs) == len(ids) + 1  # OpenAI and vLLM list the end token too


# ---- lm-evaluation-harness --------------------------------------------------------------------
def sst2_dev_rows(data_dir: Path, count: int) -> list[dict]:
    """The first rows of GLUE's SST-2 dev file (`sentence<TAB>label`, a header line, no quoting)."""
    with open(data_dir / "glue" / "SST-2" / "dev.tsv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"sentence": row["sentence"].strip(), "label": int(row["label"])} for _, row in zip(range(count), reader)]


def write_lm_eval_tasks(folder: Path, rows: list[dict], max_gen_toks: int) -> None:
    """Two tasks over the same rows: rank classification (multiple_choice) and generation (generate_until)."""
    (folder / "sst2_dev.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {folder / 'sst2_dev.jsonl'}\n"
              "validation_split: validation\ndoc_to_text: \"sentence: {{sentence}}\"\n")  # SST-2's input template
    # each choice tokenises to the prompt's target ids: " negative" + the end token (target_delimiter " ")
    (folder / "sp_rank.yaml").write_text(
        "task: sp_sst2_rank\noutput_type: multiple_choice\n" + common + "doc_to_target: label\n"
        "doc_to_choice: [\"negative<|endoftext|>\", \"positive<|endoftext|>\"]\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n")
    (folder / "sp_generate.yaml").write_text(
        "task: sp_sst2_generate\noutput_type: generate_until\n" + common + "doc_to_target: \"{{['negative', 'positive'][label]}}\"\n"
        f"generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def test_lm_eval_local_completions_equals_softprompt_eval(live, served, reference, data_dir, tmp_path, monkeypatch):
    import sys

    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    # both libraries read these at import, which may have happened before this test
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if "datasets" in sys.modules:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.setattr(sys.modules["datasets"].config, name, True)
    import lm_eval
    from lm_eval.tasks import TaskManager

    count, max_gen_toks = 16, 5
    rows = sst2_dev_rows(data_dir, count)
    examples = load_examples("sst2", "validation", data_dir)[:count]
    assert [e.input for e in examples] == [f"sentence: {r['sentence']}" for r in rows]
    assert [e.target for e in examples] == [LABELS[r["label"]] for r in rows]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_lm_eval_tasks(tasks, rows, max_gen_toks)

    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={PROMPT},base_url={live}/v1/completions,tokenizer={served / 'backbone'},tokenizer_backend=huggingface,"
                   f"num_concurrent=1,max_retries=1,tokenized_requests=True,timeout={TIMEOUT_S}",
        tasks=["sp_sst2_rank", "sp_sst2_generate"], task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True, limit=count, bootstrap_iters=0)

    ranked = sorted(results["samples"]["sp_sst2_rank"], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in ranked] == [e.input for e in examples]  # the contexts the prompt's task formats
    scores = rank_scores(reference, [features_of(reference, e.input) for e in examples], [LABELS] * count, 8)
    for sample, row in zip(ranked, scores):
        assert [resp[0] for resp in sample["filtered_resps"]] == pytest.approx(row, abs=1e-3)
    accuracy = evaluate(reference, get_task("sst2"), examples, PROMPT, "rank")["accuracy"]
    assert results["results"]["sp_sst2_rank"]["acc,none"] == pytest.approx(accuracy)

    generated = sorted(results["samples"]["sp_sst2_generate"], key=lambda s: s["doc_id"])
    expected = predict(reference, [(PROMPT, e.input) for e in examples], "generate", max_new_tokens=max_gen_toks)
    assert not any("\n" in text for text in expected)  # so lm-eval's until ["\n"] cuts nothing predict keeps
    assert [s["filtered_resps"][0].strip() for s in generated] == expected
    assert [s["resps"][0][0].strip() for s in generated] == expected


# ---- schemathesis -----------------------------------------------------------------------------
REFUSED = ("logit_bias", "presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty", "min_tokens",
           "suffix", "best_of", "tools", "tool_choice", "response_format")
# The fields that choose a server path, each set to one of a few values (KEEP: schemathesis's own value)
KEEP = "keep the generated value"
USAGE = [None, {"include_usage": True}]
KNOBS = {
    "/v1/completions": {"prompt": [KEEP, KEEP, "sentence: fine", [464, 3290, 318], [[464], [3290, 318]]],
                        "echo": [None, True, False], "stream": [None, True], "stream_options": USAGE, "logprobs": [None, 0, 2],
                        "n": [None, 2], "max_tokens": [None, 0, 1, 8], "temperature": [None, 0.0, 0.8], "seed": [None, 7]},
    "/v1/chat/completions": {"messages": [KEEP, [{"role": "user", "content": "sentence: fine"}],
                                          [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": [{"type": "text", "text": "a b"}]}]],
                             "stream": [None, True], "stream_options": USAGE, "logprobs": [None, True, False],
                             "top_logprobs": [None, 0, 2], "n": [None, 2], "max_tokens": [None, 1, 8],
                             "max_completion_tokens": [None, 4], "temperature": [None, 0.0, 0.8]},
    "/v1/predict": {"method": ["rank", "generate"], "max_new_tokens": [1, 8]},
}
EXAMPLES = 20  # per operation and kind of case
STEERED_EXAMPLES = 40  # the cases that reach the model


def steer(case, knobs: dict):
    """A positive case made likely to reach the engine: the served prompt named, refused fields dropped, path knobs set.

    Generated bodies almost never name a loaded prompt (a 404 before any computing), rarely set
    the optional fields that choose a path (echo, stream, logprobs ...), and seldom stay inside
    the server's limits, so without this the model would hardly be exercised.
    """
    if isinstance(case.body, dict):
        body = {k: v for k, v in case.body.items() if k not in REFUSED}
        body["model" if "completions" in case.operation.path else "prompt"] = PROMPT
        case.body = {**body, **{k: v for k, v in knobs.items() if v is not KEEP}}
    if "model_id" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "model_id": PROMPT}
    if case.operation.method.upper() in ("PUT", "DELETE"):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
    return case


def strategies_for(operation):
    """Positive cases, positive cases steered to the served prompt, and negative ones where there is something to negate."""
    import schemathesis
    from hypothesis import strategies as st

    positive = operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)
    knobs = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in KNOBS.get(operation.path, {}).items()})
    strategies = [(positive, EXAMPLES), (st.tuples(positive, knobs).map(lambda pair: steer(*pair)),
                                         STEERED_EXAMPLES if len(operation.body) else EXAMPLES)]
    if len(operation.body) or len(operation.path_parameters):
        strategies.append((operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE), EXAMPLES))
    return strategies


def test_schemathesis_finds_no_server_errors(served):
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    # Tight limits keep every generated request cheap (at most 4 inputs x 2 choices x 16 tokens);
    # the admin routes are on (a token) but cannot write: the prompt directory is read-only to the server.
    config = serve_config(served, docs=True, admin_token=ADMIN_TOKEN, max_tokens_limit=16, max_choices=2, max_inputs=4,
                          max_input_chars=300)
    failures: list[str] = []
    unsatisfiable: list[str] = []
    with running(config) as url, requests.Session() as session:
        unmasked = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})  # "max_tokens" is no secret
        schema = schemathesis.openapi.from_dict(session.get(f"{url}/openapi.json", timeout=TIMEOUT_S).json(), config=unmasked)
        operations = [result.ok() for result in schema.get_all_operations()]
        # the admin routes last: a PUT or DELETE that succeeded must not change what the others see
        operations.sort(key=lambda op: op.method.upper() in ("PUT", "DELETE"))
        assert {op.label for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models/{model_id}"}
        for operation, (strategy, examples) in [(op, s) for op in operations for s in strategies_for(op)]:

            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case):
                try:
                    case.call_and_validate(base_url=url, session=session, timeout=TIMEOUT_S,
                                           checks=[not_a_server_error, response_schema_conformance])
                except Exception as err:  # noqa: BLE001 - collected, so every operation is fuzzed and all are reported
                    failures.append(f"{case.operation.label}: {str(err)[:2000]}")

            try:
                check()
            except Unsatisfiable:  # a negative strategy with nothing it can break (a bare string path parameter)
                unsatisfiable.append(operation.label)
    assert len(unsatisfiable) < len(operations) / 2, unsatisfiable
    assert not failures, "\n\n".join(failures)
