"""`softprompt serve` as a process: it answers on a real port, drains in-flight requests on SIGTERM, fails cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from conftest import DATA_DIR, tiny_backbone
from softprompt.backbones import adapter_for
from softprompt.cli import main
from softprompt.prompt_io import PromptMetadata, save_prompt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-cmd")
    model, tokenizer = tiny_backbone("gpt2")
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    adapter = adapter_for(model, tokenizer, name=str(root / "backbone"))
    save_prompt(root / "prompts" / "sst2", torch.randn(4, adapter.width), PromptMetadata(
        4, adapter.width, "random-uniform", task="sst2", labels=["negative", "positive"], backbone=str(root / "backbone"),
        backbone_kind=adapter.kind, backbone_fingerprint=adapter.fingerprint()))
    return root


def start_server(prompts: Path, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`softprompt serve` as a process on a free port, once /healthz answers."""
    port = free_port()
    env = dict(os.environ, SOFTPROMPT_DATA_DIR=str(DATA_DIR), OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "softprompt.cli", "serve", "--prompts", str(prompts), "--port", str(port), *flags],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.25)
        if proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"server did not start: {proc.stderr.read().decode()[-2000:]}")


def test_sigterm_lets_in_flight_requests_finish(setup):
    # The first request of a batch waits max-wait-ms for company: SIGTERM arrives while it waits.
    proc, url = start_server(setup / "prompts", "--max-wait-ms", "2000")
    try:
        answer = {}

        def ask():
            answer["response"] = httpx.post(url + "/v1/predict", json={"prompt": "sst2", "inputs": ["fine"], "method": "rank"}, timeout=60)

        client = threading.Thread(target=ask)
        client.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        client.join(60)
        assert answer["response"].status_code == 200 and answer["response"].json()["outputs"][0] in ("negative", "positive")
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained: the conventional exit
        assert b"Traceback" not in proc.stderr.read()
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_port_in_use_or_a_missing_directory_is_one_line(setup, tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--prompts", str(setup / "prompts"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--prompts", str(tmp_path / "nowhere"), "--port", str(free_port()), "--model", str(setup / "backbone")]) == 2
    err = capsys.readouterr().err
    assert "prompt directory not found" in err and "Traceback" not in err
    assert main(["serve", "--prompts", str(setup / "prompts"), "--admin-token", "short"]) == 2
    assert "--admin-token" in capsys.readouterr().err


def test_replicas_on_one_directory_follow_each_other(setup, tmp_path):
    import base64
    import shutil

    shutil.copytree(setup / "prompts", tmp_path / "prompts")
    env = {"SOFTPROMPT_ADMIN_TOKEN": "replica-token-1"}
    flags = ("--prompts-writable", "--watch-seconds", "0.5", "--model", str(setup / "backbone"))
    first, url1 = start_server(tmp_path / "prompts", *flags, env=env)
    second, url2 = start_server(tmp_path / "prompts", *flags, env=env)
    try:
        auth = {"Authorization": "Bearer replica-token-1"}
        body = {"weights": base64.b64encode((setup / "prompts" / "sst2" / "prompt.safetensors").read_bytes()).decode(),
                "metadata": json.loads((setup / "prompts" / "sst2" / "prompt.json").read_text())}
        assert httpx.put(url1 + "/v1/prompts/fresh", json=body, headers=auth, timeout=30).status_code == 200
        request = {"prompt": "fresh", "inputs": ["fine"], "method": "rank"}
        for _ in range(60):  # the other replica rescans every 0.5 s, between batches
            answer = httpx.post(url2 + "/v1/predict", json=request, timeout=30)
            if answer.status_code == 200:
                break
            time.sleep(0.25)
        assert answer.status_code == 200
        assert answer.json() == httpx.post(url1 + "/v1/predict", json=request, timeout=30).json()
        hashes = [{p["name"]: p["sha256"] for p in httpx.get(u + "/v1/prompts").json()["prompts"]} for u in (url1, url2)]
        assert hashes[0] == hashes[1] and hashes[0]["fresh"].startswith("sha256:")
        assert httpx.delete(url1 + "/v1/prompts/fresh", headers=auth, timeout=30).status_code == 200
        for _ in range(60):
            if httpx.post(url2 + "/v1/predict", json=request, timeout=30).status_code == 404:
                break
            time.sleep(0.25)
        assert httpx.post(url2 + "/v1/predict", json=request, timeout=30).status_code == 404
    finally:
        for proc in (first, second):
            proc.kill()


def test_slow_and_idle_connections_are_closed_and_do_not_block_others(setup):
    proc, url = start_server(setup / "prompts", "--header-timeout-s", "1", "--limit-concurrency", "4")
    try:
        port = int(url.rsplit(":", 1)[1])
        crowd = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # idle sockets beyond the request limit
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        idle = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        start = time.monotonic()
        trickle.sendall(b"POST /v1/predict HTTP/1.1\r\n")
        assert httpx.post(url + "/v1/predict", json={"prompt": "sst2", "inputs": ["fine"], "method": "rank"}, timeout=30).status_code == 200
        for _ in range(6):  # a byte every 0.4 s never finishes the head; the 1 s deadline is not reset by it
            time.sleep(0.4)
            try:
                trickle.sendall(b"X")
            except OSError:
                break
        idle.settimeout(5)
        trickle.settimeout(5)
        assert idle.recv(1) == b"" and trickle.recv(1) in (b"", b"H")  # closed by the server (or a 4xx head)
        assert time.monotonic() - start < 5
        for sock in crowd:
            sock.close()
    finally:
        proc.kill()


def test_the_admin_token_from_a_file_and_the_api_key(setup, tmp_path):
    token = tmp_path / "token"
    token.write_text("file-token-123\n")
    proc, url = start_server(setup / "prompts", "--admin-token-file", str(token), "--api-key", "key-123456")
    try:
        assert httpx.delete(url + "/v1/prompts/sst2", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer key-123456"}, timeout=30).status_code == 200
        assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
    finally:
        proc.kill()
    assert main(["serve", "--prompts", str(setup / "prompts"), "--admin-token-file", str(tmp_path / "missing")]) == 2
