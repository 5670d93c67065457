"""`softprompt serve` on tiny models: answers equal `predict`, mixed concurrent requests, hot loading, errors.

The app runs in-process (FastAPI's TestClient, a real ASGI stack); the backbone is a tiny random
model saved to a folder and loaded the way the server and `softprompt predict` load it.
"""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import tiny_backbone
from softprompt.evaluate import predict
from softprompt.model import load_prompted_model
from softprompt.prompt_io import WEIGHTS_NAME, PromptMetadata, load_prompt, save_prompt
from softprompt.server.app import create_app
from softprompt.server.config import ServeConfig
from softprompt.server.prompts import load_server_model

LABELS = {"sst2": ["negative", "positive"], "rte": ["entailment", "not_entailment"], "cb": ["entailment", "contradiction", "neutral"]}
LENGTHS = {"sst2": 5, "rte": 3, "cb": 8}
TOKEN = "secret-token-123"
TEXTS = ["sentence: a gripping , funny film .", "premise: it rains. hypothesis: it is wet.", "sentence: dull", "x y z"]


@pytest.fixture(scope="module", params=["t5", "llama"])
def served(request, tmp_path_factory):
    """A saved tiny backbone and a prompt directory with three prompts of different lengths."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"serve-{kind}")
    model, tokenizer = tiny_backbone(kind)
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    prompts = root / "prompts"
    probe = load_server_model(ServeConfig(prompts=str(_empty(root)), model=str(root / "backbone")))[0].adapter
    for seed, (task, labels) in enumerate(LABELS.items()):
        weight = torch.randn(LENGTHS[task], probe.width, generator=torch.Generator().manual_seed(seed))
        save_prompt(prompts / task, weight, PromptMetadata(
            LENGTHS[task], probe.width, "random-uniform", task=task, labels=labels, backbone=str(root / "backbone"),
            backbone_kind=probe.kind, backbone_fingerprint=probe.fingerprint(), max_target_length=8))
    return root


def _empty(root: Path) -> Path:
    (root / "empty").mkdir(exist_ok=True)
    return root / "empty"


def make_client(root: Path, **settings) -> TestClient:
    config = ServeConfig(prompts=str(root / "prompts"), model=str(root / "backbone"), **settings)
    model, directory = load_server_model(config)
    return TestClient(create_app(model, directory, config))


@pytest.fixture(scope="module")
def client(served):
    with make_client(served, max_wait_ms=100, admin_token=TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def reference(served):
    """The model `softprompt predict` builds for the same prompts."""
    return load_prompted_model([f"{t}={served / 'prompts' / t}" for t in LABELS], str(served / "backbone")).eval()


def error(response, status: int, field: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == status and body["message"]
    if field is not None:
        assert body["param"] == field or field in body["message"], body
    return body["message"]


def test_mixed_concurrent_requests_equal_predict(client, reference):
    requests = [(task, text, method) for task in LABELS for text in TEXTS for method in ("rank", "generate")]
    before = batches_run(client)

    def post(request):
        task, text, method = request
        return client.post("/v1/predict", json={"prompt": task, "inputs": [text, TEXTS[0]], "method": method, "max_new_tokens": 5})

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, requests))
    for (task, text, method), response in zip(requests, responses):
        assert response.status_code == 200, response.text
        expected = predict(reference, [(task, text), (task, TEXTS[0])], method, max_new_tokens=5)
        assert response.json()["outputs"] == expected
        if method == "rank":
            scores = response.json()["scores"]
            assert list(scores[0]) == LABELS[task] and max(scores[0], key=scores[0].get) == expected[0]
    assert batches_run(client) - before < len(requests)  # requests for different prompts shared forwards


def batches_run(client) -> float:
    text = client.get("/metrics").text
    return float(re.search(r"^softprompt_batch_examples_count (\S+)$", text, re.M).group(1))


def test_score_endpoint_gives_candidate_log_probabilities(client, reference):
    from softprompt.data import encode
    from softprompt.evaluate import rank_scores
    from softprompt.tasks.base import Example

    candidates = ["positive", "negative", "a longer answer"]
    response = client.post("/v1/score", json={"prompt": "sst2", "input": TEXTS[0], "candidates": candidates})
    assert response.status_code == 200, response.text
    feature = encode(reference.adapter, "sst2", reference.bank["sst2"], Example(TEXTS[0], ""), with_target=False)
    expected = rank_scores(reference, [feature], [candidates], 8)[0]
    assert response.json()["scores"] == pytest.approx(expected, abs=1e-4)
    assert all(s < 0 for s in expected)


def test_openai_client_works_unchanged(client, reference):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    completion = api.completions.create(model="rte", prompt=[TEXTS[1], TEXTS[2]], max_tokens=4, temperature=0)
    expected = predict(reference, [("rte", TEXTS[1]), ("rte", TEXTS[2])], "generate", max_new_tokens=4)
    assert [c.text.strip() for c in completion.choices] == expected  # predict strips; completions give the raw text
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage.prompt_tokens > 0 and completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert {m.id for m in api.models.list().data} >= set(LABELS)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        api.completions.create(model="rte", prompt="x", logit_bias={"5": 10})
    with pytest.raises(openai.NotFoundError, match="unknown prompt"):
        api.completions.create(model="nope", prompt="x")


def test_prompt_listing_and_health(client):
    listed = {p["name"]: p for p in client.get("/v1/prompts").json()["prompts"]}
    assert set(listed) >= set(LABELS)
    assert listed["cb"]["labels"] == LABELS["cb"] and listed["cb"]["length"] == LENGTHS["cb"]
    assert listed["cb"]["backbone_fingerprint"].startswith("v2:")
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'softprompt_requests_total{endpoint="/healthz",status="200"}' in metrics
    assert "softprompt_prompts_loaded" in metrics and "softprompt_queue_wait_seconds_bucket" in metrics


def test_hot_load_upload_and_unload_need_the_admin_token(client, served):
    folder = {"folder": "sst2"}
    error(client.put("/v1/prompts/copy", json=folder), 401)
    error(client.put("/v1/prompts/copy", json=folder, headers={"Authorization": "Bearer wrong-token"}), 401)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.put("/v1/prompts/copy", json=folder, headers=auth).status_code == 200
    same = [client.post("/v1/predict", json={"prompt": p, "inputs": TEXTS[:2], "method": "rank"}).json() for p in ("sst2", "copy")]
    assert same[0] == same[1]

    weight, metadata = load_prompt(served / "prompts" / "cb")
    upload = {"weights": base64.b64encode((served / "prompts" / "cb" / WEIGHTS_NAME).read_bytes()).decode(),
              "metadata": json.loads((served / "prompts" / "cb" / "prompt.json").read_text())}
    assert client.put("/v1/prompts/uploaded", json=upload, headers=auth).json()["loaded"]["labels"] == metadata.labels
    assert client.post("/v1/predict", json={"prompt": "uploaded", "inputs": ["a"], "method": "rank"}).json()["outputs"][0] in LABELS["cb"]

    bad = dict(upload, weights=base64.b64encode(b"not a safetensors file").decode())
    assert "corrupt" in error(client.put("/v1/prompts/bad", json=bad, headers=auth), 400)
    wrong_width = dict(upload, metadata=dict(upload["metadata"], width=7))
    error(client.put("/v1/prompts/bad", json=wrong_width, headers=auth), 400)
    foreign = dict(upload, metadata=dict(upload["metadata"], backbone_fingerprint="v2:0123456789abcdef"))
    assert "fingerprint" in error(client.put("/v1/prompts/bad", json=foreign, headers=auth), 400)
    assert "bad" not in [p["name"] for p in client.get("/v1/prompts").json()["prompts"]]

    for name in ("copy", "uploaded"):
        assert client.delete(f"/v1/prompts/{name}", headers=auth).status_code == 200
    error(client.post("/v1/predict", json={"prompt": "copy", "inputs": ["a"]}), 404, "prompt")
    error(client.delete("/v1/prompts/copy", headers=auth), 404)


def test_admin_endpoints_are_off_without_a_token(served):
    with make_client(served) as plain:
        assert "--admin-token" in error(plain.put("/v1/prompts/x", json={"folder": "sst2"}), 403)
        error(plain.delete("/v1/prompts/sst2"), 403)
        assert plain.post("/v1/predict", json={"prompt": "sst2", "inputs": ["fine"], "method": "rank"}).status_code == 200


@pytest.mark.parametrize("name,body", [
    ("..%2F..%2Fetc", {"folder": "sst2"}),
    ("evil", {"folder": "../../etc"}),
    ("evil", {"folder": "/etc"}),
    (".hidden", {"folder": "sst2"}),
])
def test_prompt_names_and_folders_cannot_leave_the_directory(client, name, body):
    response = client.put(f"/v1/prompts/{name}", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["message"]
    assert not any(p["name"] in ("evil", ".hidden") for p in client.get("/v1/prompts").json()["prompts"])


@pytest.mark.parametrize("path,body,status,field", [
    ("/v1/predict", {"inputs": ["a"]}, 400, "prompt"),
    ("/v1/predict", {"prompt": "sst2"}, 400, "inputs"),
    ("/v1/predict", {"prompt": "sst2", "inputs": []}, 400, "inputs"),
    ("/v1/predict", {"prompt": "sst2", "inputs": "a"}, 400, "inputs"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a", 3]}, 400, "inputs.1"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a"], "method": "beam"}, 400, "method"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a"], "extra": 1}, 400, "extra"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["  "]}, 400, "inputs.0"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a"], "max_new_tokens": 0}, 400, "max_new_tokens"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a"], "max_new_tokens": 100000}, 400, "max_new_tokens"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a"] * 65}, 413, "inputs"),
    ("/v1/predict", {"prompt": "sst2", "inputs": ["a" * 8001]}, 413, "inputs.0"),
    ("/v1/predict", {"prompt": "nope", "inputs": ["a"]}, 404, "prompt"),
    ("/v1/score", {"prompt": "sst2", "input": "a", "candidates": []}, 400, "candidates"),
    ("/v1/score", {"prompt": "sst2", "candidates": ["x"]}, 400, "input"),
    ("/v1/completions", {"model": "sst2"}, 400, "prompt"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "n": 17}, 400, "n"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "presence_penalty": 1.0}, 400, "presence_penalty"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "frequency_penalty": -1.0}, 400, "frequency_penalty"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "suffix": "z"}, 400, "suffix"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "temperature": 3}, 400, "temperature"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "stop": ["", "x"]}, 400, "stop"),
    ("/v1/completions", {"model": "sst2", "prompt": [[]]}, 400, "prompt.0"),
    ("/v1/completions", {"model": "sst2", "prompt": [10 ** 9]}, 400, "prompt"),
    ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "model"),
    ("/v1/chat/completions", {"model": "sst2"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "sst2", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "sst2", "messages": [{"role": "robot", "content": "a"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"model": "sst2", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages.0.content.0"),
    ("/v1/chat/completions", {"model": "sst2", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]},
     400, "tools"),
    ("/v1/chat/completions", {"model": "sst2", "messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}, 400,
     "top_logprobs"),
    ("/v1/completions", {"model": "sst2", "prompt": []}, 400, "prompt"),
    ("/v1/completions", {"model": "sst2", "prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
])
def test_malformed_requests_get_a_4xx_naming_the_field(client, path, body, status, field):
    error(client.post(path, json=body), status, field)


def test_unparseable_and_oversized_bodies(client, served):
    assert "JSON" in error(client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}), 400)
    error(client.get("/v1/nothing-here"), 404)
    error(client.get("/v1/predict"), 405)
    with make_client(served, max_body_mb=0.001) as small:
        error(small.post("/v1/predict", json={"prompt": "sst2", "inputs": ["a" * 5000]}), 413)
    assert client.get("/healthz").status_code == 200  # alive after all of it


def test_a_failing_batch_fails_only_its_requests(client, monkeypatch):
    model = client.app.state.model

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(model.adapter, "score", broken)
    message = error(client.post("/v1/predict", json={"prompt": "sst2", "inputs": ["a"], "method": "rank"}), 500)
    assert "failed" in message and "simulated device failure" in message
    monkeypatch.undo()
    assert client.post("/v1/predict", json={"prompt": "sst2", "inputs": ["a"], "method": "rank"}).status_code == 200


def test_a_bad_prompt_folder_stops_the_start_naming_it(served, tmp_path):
    import shutil

    from softprompt.errors import SoftpromptError

    shutil.copytree(served / "prompts", tmp_path / "prompts")
    (tmp_path / "prompts" / "rte" / WEIGHTS_NAME).write_bytes(b"truncated")
    with pytest.raises(SoftpromptError, match=r"prompts/rte"):
        load_server_model(ServeConfig(prompts=str(tmp_path / "prompts"), model=str(served / "backbone")))
    with pytest.raises(SoftpromptError, match="prompt directory not found"):
        load_server_model(ServeConfig(prompts=str(tmp_path / "missing"), model=str(served / "backbone")))


def test_chat_messages_become_the_input_by_chat_format(served, reference):
    if "llama" not in str(served):
        pytest.skip("one backbone is enough: the mapping is the edge's")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": TEXTS[0]}]
    with make_client(served) as plain:
        body = {"model": "sst2", "messages": messages, "max_tokens": 4}
        chat = plain.post("/v1/chat/completions", json=body).json()
        completion = plain.post("/v1/completions", json={"model": "sst2", "prompt": "be brief\n" + TEXTS[0], "max_tokens": 4}).json()
        assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]  # 'input': texts joined by newlines
        assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    from softprompt.errors import SoftpromptError

    with pytest.raises(SoftpromptError, match="no chat template"):
        make_client(served, chat_format="backbone")
    config = ServeConfig(prompts=str(served / "prompts"), model=str(served / "backbone"), chat_format="backbone")
    model, directory = load_server_model(config)
    model.adapter.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    with TestClient(create_app(model, directory, config)) as templated:
        chat = templated.post("/v1/chat/completions", json={"model": "sst2", "messages": messages, "max_tokens": 4}).json()
        text = f"<system>be brief\n<user>{TEXTS[0]}\n<assistant>"
        completion = templated.post("/v1/completions", json={"model": "sst2", "prompt": text, "max_tokens": 4}).json()
        assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]
