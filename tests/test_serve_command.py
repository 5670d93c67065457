"""`softprompt serve` as a process: it answers on a real port, drains in-flight requests on SIGTERM, fails cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

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


def test_sigterm_lets_in_flight_requests_finish(setup):
    port = free_port()
    env = dict(os.environ, SOFTPROMPT_DATA_DIR=str(DATA_DIR), OMP_NUM_THREADS="1")
    # The first request of a batch waits max-wait-ms for company: SIGTERM arrives while it waits.
    proc = subprocess.Popen([sys.executable, "-m", "softprompt.cli", "serve", "--prompts", str(setup / "prompts"), "--port", str(port),
                             "--max-wait-ms", "2000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        else:
            pytest.fail(f"server did not start: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}")
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
