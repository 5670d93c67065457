"""`softprompt serve` under bad input and load, in-process: each bad request gets a 4xx and the next one succeeds;
overload gets a 503 with Retry-After, a late request a 504, a stuck engine an honest /healthz, a gone client no work."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from safetensors.torch import save

from conftest import tiny_backbone
from softprompt.prompt_io import PromptMetadata, save_prompt
from softprompt.server.app import create_app
from softprompt.server.config import ServeConfig
from softprompt.server.prompts import load_server_model

TOKEN = "admin-token-123"
KEY = "api-key-12345"
GOOD = {"prompt": "sst2", "inputs": ["sentence: fine"], "method": "rank"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    model, tokenizer = tiny_backbone("gpt2")
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    (root / "empty").mkdir()
    adapter = load_server_model(ServeConfig(prompts=str(root / "empty"), model=str(root / "backbone")))[0].adapter
    save_prompt(root / "prompts" / "sst2", torch.randn(4, adapter.width), PromptMetadata(
        4, adapter.width, "random-uniform", task="sst2", labels=["negative", "positive"], backbone=str(root / "backbone"),
        backbone_kind=adapter.kind, backbone_fingerprint=adapter.fingerprint(), max_target_length=8))
    return root


def app_for(root: Path, **settings):
    config = ServeConfig(prompts=str(root / "prompts"), model=str(root / "backbone"), **settings)
    return create_app(*load_server_model(config), config)


@pytest.fixture(scope="module")
def client(served):
    with TestClient(app_for(served, admin_token=TOKEN)) as c:
        yield c


def ok(client) -> None:
    response = client.post("/v1/predict", json=GOOD)
    assert response.status_code == 200, response.text


def held(client) -> threading.Event:
    """Hold the app's model thread, so requests queue behind it."""
    release = threading.Event()
    client.app.state.engine.call(lambda: release.wait(30))
    return release


@pytest.mark.parametrize("path,raw", [
    ("/v1/predict", b'{"prompt": "sst2", "inputs": ["\\ud800"], "method": "rank"}'),
    ("/v1/predict", b'{"prompt": "sst2", "inputs": ["a \\udfff b"], "method": "generate", "max_new_tokens": 2}'),
    ("/v1/completions", b'{"model": "sst2", "prompt": "\\ud800", "max_tokens": 2}'),
    ("/v1/chat/completions", b'{"model": "sst2", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}'),
    ("/v1/score", b'{"prompt": "sst2", "input": "x", "candidates": ["\\ud800"]}'),
])
def test_a_lone_surrogate_is_a_400_and_the_server_lives(client, path, raw):
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]
    ok(client)


def test_a_17_mib_chunked_body_is_a_413(client):
    def chunks():
        for _ in range(17):
            yield b" " * 2**20

    response = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    ok(client)


def test_deep_json_nesting_is_a_4xx(client):
    deep = b"[" * 200_000 + b"]" * 200_000
    response = client.post("/v1/predict", content=deep, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    ok(client)


def upload(weight_bytes: bytes, **meta) -> dict:
    metadata = {"length": 4, "width": 32, "init": "random-uniform", "task": "sst2", "labels": ["negative", "positive"]} | meta
    return {"weights": base64.b64encode(weight_bytes).decode(), "metadata": metadata}


@pytest.mark.parametrize("tensor,meta,word", [
    (torch.full((4, 32), 1e300, dtype=torch.float64), {}, "finite"),
    (torch.ones(4, 32, dtype=torch.bool), {}, "dtype"),
    (torch.zeros(4, 32).to(torch.float8_e4m3fn), {}, "dtype"),
    (torch.ones(4, 32, dtype=torch.int32), {}, "dtype"),
    (torch.randn(4, 32), {"max_input_length": -1}, "max_input_length"),
    (torch.randn(4, 32), {"labels": ["a", "a"]}, "label"),
])
def test_bad_uploads_are_400s_naming_the_problem(client, served, tensor, meta, word):
    fingerprint = client.app.state.model.adapter.fingerprint()
    body = upload(save({"prompt": tensor}), backbone_fingerprint=fingerprint, **meta)
    response = client.put("/v1/prompts/bad", json=body, headers={"Authorization": f"bearer {TOKEN}"})  # lower-case scheme
    assert response.status_code == 400, response.text
    assert word in response.json()["error"]["message"].lower()
    assert "bad" not in [p["name"] for p in client.get("/v1/prompts").json()["prompts"]]
    ok(client)


def test_overload_is_a_503_with_retry_after(served):
    with TestClient(app_for(served, max_queued=4)) as c:
        release = held(c)
        results = []

        def send():
            results.append(c.post("/v1/predict", json=GOOD))

        threads = [threading.Thread(target=send) for _ in range(6)]  # 6 requests x 2 candidates, room for 4
        for t in threads:
            t.start()
        time.sleep(1.0)
        release.set()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 1 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        refused = next(r for r in results if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1 and "max-queued" in refused.json()["error"]["message"]
        ok(c)


def test_a_request_past_its_deadline_is_a_504(served):
    with TestClient(app_for(served, request_timeout_s=0.2)) as c:
        release = held(c)
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("r", c.post("/v1/predict", json=GOOD)))
        thread.start()
        time.sleep(0.6)
        release.set()
        thread.join(60)
        assert result["r"].status_code == 504, result["r"].text
        assert 'softprompt_request_failures_total{kind="deadline"} 1.0' in c.get("/metrics").text
        ok(c)


def test_healthz_is_503_while_the_engine_is_stuck_and_readyz_while_draining(served):
    with TestClient(app_for(served, stuck_seconds=0.3)) as c:
        assert c.get("/healthz").json()["status"] == "ok" and c.get("/readyz").status_code == 200
        release = held(c)
        thread = threading.Thread(target=lambda: c.post("/v1/predict", json=GOOD))
        thread.start()
        time.sleep(0.8)
        stuck = c.get("/healthz")
        assert stuck.status_code == 503 and stuck.json()["status"] == "stuck" and stuck.json()["queued_examples"] == 2
        release.set()
        thread.join(60)
        assert c.get("/healthz").status_code == 200
        c.app.state.engine.close(1)
        assert c.get("/healthz").status_code == 503 and c.get("/readyz").status_code == 503
        assert c.post("/v1/predict", json=GOOD).status_code == 503


def test_api_key_host_check_and_docs(served):
    with TestClient(app_for(served, api_key=KEY)) as c:
        assert c.post("/v1/predict", json=GOOD).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/predict", json=GOOD, headers={"Authorization": f"BEARER {KEY}"}).status_code == 200
        assert c.get("/docs").status_code in (401, 404) and c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
        assert c.get("/healthz", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding: a foreign Host
    with TestClient(app_for(served, docs=True)) as c:
        assert c.get("/openapi.json").status_code == 200


def test_each_request_gets_an_id_and_one_log_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="softprompt.server.access"):
        response = client.post("/v1/predict", json=GOOD, headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    lines = [r.getMessage() for r in caplog.records if r.name == "softprompt.server.access"]
    assert any(line.startswith("abc-123 POST /v1/predict 200") for line in lines)
    assert client.post("/v1/predict", json=GOOD, headers={"x-request-id": "bad id!"}).headers["x-request-id"] != "bad id!"


def test_metrics_have_what_vllm_users_look_for(client):
    client.post("/v1/completions", json={"model": "sst2", "prompt": "sentence: fine", "max_tokens": 2})
    text = client.get("/metrics").text
    for name in ("softprompt_num_requests_running", "softprompt_num_requests_waiting", 'softprompt_prompt_requests_total{prompt="sst2"}',
                 "softprompt_prompt_tokens_total", "softprompt_generation_tokens_total", "softprompt_forward_seconds_bucket",
                 "softprompt_time_to_first_token_seconds_bucket", "softprompt_prefix_cache_hits"):
        assert name in text, name


def test_score_candidates_are_bounded_per_forward(served, monkeypatch):
    with TestClient(app_for(served, max_batch_size=8)) as c:
        adapter = c.app.state.model.adapter
        rows = []
        original = type(adapter).score

        def counting(self, prompts, batch, pair_example, candidate_ids):  # records each forward's candidate rows
            rows.append(candidate_ids.shape[0])
            return original(self, prompts, batch, pair_example, candidate_ids)

        monkeypatch.setattr(type(adapter), "score", counting)
        release = held(c)
        body = {"prompt": "sst2", "input": "sentence: fine", "candidates": [f"word{i}" for i in range(8)]}
        threads = [threading.Thread(target=lambda: c.post("/v1/score", json=body)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        release.set()
        for t in threads:
            t.join(60)
        assert sum(rows) == 32 and max(rows) <= 8, rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_client_that_goes_away_costs_no_forward(served):
    app = app_for(served)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        release = held(type("C", (), {"app": app})())
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/predict", json=GOOD, timeout=0.5)
        time.sleep(0.5)  # the server sees the disconnect and cancels the job
        release.set()
        assert httpx.post(url + "/v1/predict", json=GOOD, timeout=30).status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert 'softprompt_request_failures_total{kind="cancelled"} 1.0' in metrics
        assert "softprompt_batch_examples_count 1.0" in metrics  # only the second request was computed
    finally:
        server.should_exit = True
        thread.join(10)


def test_requests_in_flight_are_bounded_but_health_probes_never(served):
    with TestClient(app_for(served, limit_concurrency=1)) as c:
        release = held(c)
        first = threading.Thread(target=lambda: c.post("/v1/predict", json=GOOD))
        first.start()
        time.sleep(0.5)
        refused = c.post("/v1/predict", json=GOOD)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1" and "limit-concurrency" in refused.text
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
        release.set()
        first.join(60)
        ok(c)


def test_retry_after_on_a_fresh_engine_is_the_floor_not_a_guess(served):
    with TestClient(app_for(served, max_queued=2)) as c:
        release = held(c)
        first = threading.Thread(target=lambda: c.post("/v1/predict", json=GOOD))
        first.start()
        time.sleep(0.5)
        refused = c.post("/v1/predict", json=GOOD)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        release.set()
        first.join(60)


def test_chat_without_max_tokens_gets_what_the_context_leaves(client):
    long = "sentence: " + "fine " * 300  # ~300 tokens: 256 new ones would not fit in the tiny model's 512 positions
    body = {"model": "sst2", "messages": [{"role": "user", "content": long}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    too_many = client.post("/v1/chat/completions", json=body | {"max_tokens": 256})
    assert too_many.status_code == 400 and "maximum context length" in too_many.json()["error"]["message"]
