"""Load test of `softprompt serve`: 16 concurrent clients, 8 prompts mixed, 10% malformed requests.

Localhost only, bounded in requests and time. It builds 8 prompts for the backbone (a trained
prompt from `--prompt` if given, the rest sampled-vocab initialisations with different seeds: the
server's cost does not depend on what the prompts learned), computes every valid request's
expected answer with `softprompt.evaluate.predict` (what `softprompt predict` prints), then starts
servers as subprocesses and runs the same request plan against each:

- `mixed`: 8 prompts loaded, each request names one of the 8 at random; 10% malformed requests.
- `single`: the same server, every request on one prompt: mixing costs nothing if mixed >= 0.9x this.
- `many`: a server with 10,000 prompts loaded (the 8, plus copies under other names, hard-linked
  on disk), the mixed plan again; its resident memory and start time are reported.
- `peft`: benchmarks/peft_server.py (same HTTP stack, PeftModel, `set_adapter` per request,
  requests serialised as PEFT requires) with the same 8 prompts exported to PEFT, the valid
  requests of the mixed plan.

It reports p50/p99 latency, valid examples/s, 5xx count, answers that differ from predict, and
the ratios. Writes results/serve_load-<device>.json.

    python benchmarks/serve_load.py --prompt runs/sst2-seed1 --requests 160
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from measurement import environment, write_json

from softprompt.backbones import DEFAULT_BACKBONE, BackboneSpec, load_backbone
from softprompt.config import PromptConfig
from softprompt.evaluate import predict
from softprompt.interop import export_prompt
from softprompt.model import load_prompted_model
from softprompt.prompt import initial_prompt
from softprompt.prompt_io import METADATA_NAME, WEIGHTS_NAME, PromptMetadata, load_prompt, save_prompt
from softprompt.tasks import get_task

HERE = Path(__file__).resolve().parent
MALFORMED = [
    {"inputs": ["a fine film"]},  # no prompt
    {"prompt": "no-such-prompt", "inputs": ["a fine film"]},
    {"prompt": "p0", "inputs": "not a list"},
    {"prompt": "p0", "inputs": ["   "]},
    {"prompt": "p0", "inputs": ["x"], "method": "beam"},
    "{not json",
]


def build_prompts(model: str, trained: str | None, root: Path, count: int) -> tuple[Path, list[str]]:
    """`count` prompt folders p0..p{count-1} under root/prompts for backbone `model`; returns (dir, names)."""
    backbone = load_backbone(BackboneSpec(model, "fp32", "cpu"))
    task = get_task("sst2")
    base = load_prompt(trained) if trained else None
    length = base[1].length if base else 100
    names = [f"p{i}" for i in range(count)]
    for i, name in enumerate(names):
        if base is not None and i == 0:
            weight, meta = base
        else:
            init = initial_prompt(PromptConfig(length=length, init="sampled-vocab"), backbone, task.class_words,
                                  torch.Generator().manual_seed(i))
            weight = init.weight
            meta = PromptMetadata(length, backbone.width, "sampled-vocab", task="sst2", labels=list(task.labels),
                                  backbone=model, backbone_kind=backbone.kind, backbone_fingerprint=backbone.fingerprint())
        save_prompt(root / "prompts" / name, weight, meta)
    return root / "prompts", names


def plan(names: list[str], texts: list[str], requests: int, inputs: int, malformed: float, seed: int) -> list[Any]:
    """The requests, fixed by `seed`: 3 in 4 rank, 1 in 4 generate, a share malformed."""
    rng = random.Random(seed)
    out: list[Any] = []
    for _ in range(requests):
        if rng.random() < malformed:
            out.append(rng.choice(MALFORMED))
            continue
        method = "rank" if rng.random() < 0.75 else "generate"
        out.append({"prompt": rng.choice(names), "inputs": rng.sample(texts, inputs), "method": method, "max_new_tokens": 3})
    return out


def expected_outputs(model: str, prompt_dir: Path, names: list[str], plans: list[list[Any]]) -> dict[tuple, str]:
    """predict()'s output for every (prompt, input, method) that a valid request of the plans sends."""
    reference = load_prompted_model([f"{n}={prompt_dir / n}" for n in names], model).eval()
    wanted = {"rank": set(), "generate": set()}
    for request in (r for p in plans for r in p if is_valid(r)):
        wanted[request["method"]].update((request["prompt"], t) for t in request["inputs"])
    answers = {}
    for method, pairs in wanted.items():
        pairs = sorted(pairs)
        for pair, output in zip(pairs, predict(reference, pairs, method, max_new_tokens=3)):
            answers[(*pair, method)] = output
    return answers


def is_valid(request: Any) -> bool:
    return isinstance(request, dict) and request not in MALFORMED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, timeout: float) -> tuple[subprocess.Popen, float]:
    """A server subprocess, once /healthz answers; returns it and its start time in seconds."""
    begin = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.perf_counter() - begin < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited during start: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - begin
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_plan(port: int, requests: list[Any], clients: int, answers: dict | None, max_seconds: float) -> dict[str, Any]:
    """Send the plan from `clients` threads; latency, throughput, status counts and mismatches with predict."""
    url = f"http://127.0.0.1:{port}/v1/predict"
    deadline = time.perf_counter() + max_seconds

    def send(request: Any) -> tuple[Any, int, float, Any]:
        if time.perf_counter() > deadline:
            return request, -1, 0.0, None
        begin = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            if isinstance(request, str):
                r = client.post(url, content=request.encode(), headers={"content-type": "application/json"})
            else:
                r = client.post(url, json=request)
        return request, r.status_code, time.perf_counter() - begin, r.json()

    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, requests))
    wall = time.perf_counter() - begin
    done = [r for r in results if r[1] != -1]
    valid = [r for r in done if is_valid(r[0])]
    latencies = sorted(r[2] for r in valid if r[1] == 200)
    mismatches = 0
    if answers is not None:
        for request, status, _, body in valid:
            expected = [answers[(request["prompt"], t, request["method"])] for t in request["inputs"]]
            mismatches += status != 200 or body.get("outputs") != expected
    statuses: dict[str, int] = {}
    for r in done:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
    examples = sum(len(r[0]["inputs"]) for r in valid if r[1] == 200)
    return {
        "requests_sent": len(done), "requests_skipped_for_time": len(results) - len(done), "wall_s": round(wall, 2),
        "valid_examples_per_s": round(examples / wall, 2), "statuses": statuses,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "malformed_answered_4xx": sum(1 for r in done if not is_valid(r[0]) and 400 <= r[1] < 500),
        "malformed_sent": sum(1 for r in done if not is_valid(r[0])),
        "latency_p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "latency_p99_s": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3) if latencies else None,
        "mismatches_with_predict": mismatches if answers is not None else None,
    }


def many_prompt_dir(prompt_dir: Path, names: list[str], root: Path, total: int) -> Path:
    """The 8 prompts plus copies up to `total` folders; weights hard-linked (no disk), metadata written."""
    many = root / "many"
    for i in range(total):
        source = prompt_dir / names[i % len(names)]
        target = many / (names[i] if i < len(names) else f"filler{i}")
        target.mkdir(parents=True)
        os.link(source / WEIGHTS_NAME, target / WEIGHTS_NAME)
        os.link(source / METADATA_NAME, target / METADATA_NAME)
    return many


def serve_command(model: str, prompts: Path, port: int, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "softprompt.cli", "serve", "--model", model, "--prompts", str(prompts), "--port", str(port),
            "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--prompt", help="a trained prompt directory for this backbone, used as prompt p0")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160, help="requests per phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--inputs-per-request", type=int, default=4)
    parser.add_argument("--malformed", type=float, default=0.1)
    parser.add_argument("--many", type=int, default=10000, help="prompts loaded in the 'many' phase")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--max-seconds", type=float, default=600, help="per phase: requests not sent by then are skipped")
    parser.add_argument("--phases", default="mixed,single,many,peft")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    phases = args.phases.split(",")
    root = Path(tempfile.mkdtemp(prefix="serve-load-"))
    prompt_dir, names = build_prompts(args.model, args.prompt, root, args.prompts)
    texts = [e.input for e in get_task("sst2").load("validation", Path(os.environ.get("SOFTPROMPT_DATA_DIR", "../shared/data")))[:200]]
    plans = {"mixed": plan(names, texts, args.requests, args.inputs_per_request, args.malformed, 0),
             "single": plan(names[:1], texts, args.requests, args.inputs_per_request, args.malformed, 0)}
    answers = expected_outputs(args.model, prompt_dir, names, list(plans.values()))
    result: dict[str, Any] = {"environment": environment(torch.device("cpu")), "settings": vars(args) | {"output": str(args.output)},
                              "phases": {}}
    warmup = [r for r in plans["mixed"] if is_valid(r)][: args.clients]

    if "mixed" in phases or "single" in phases:
        port = free_port()
        proc, started = start(serve_command(args.model, prompt_dir, port, args), port, 600)
        run_plan(port, warmup, args.clients, None, args.max_seconds)
        for name in ("single", "mixed"):
            if name in phases:
                result["phases"][name] = run_plan(port, plans[name], args.clients, answers, args.max_seconds)
                result["phases"][name]["server_rss_mib"] = rss_mib(proc.pid)
        result["phases"]["mixed_start_s"] = round(started, 1)
        result["sigterm_exit_code"] = stop(proc)
    if "many" in phases:
        many = many_prompt_dir(prompt_dir, names, root, args.many)
        port = free_port()
        proc, started = start(serve_command(args.model, many, port, args), port, 1800)
        run_plan(port, warmup, args.clients, None, args.max_seconds)
        result["phases"]["many"] = run_plan(port, plans["mixed"], args.clients, answers, args.max_seconds)
        result["phases"]["many"] |= {"prompts_loaded": args.many, "server_rss_mib": rss_mib(proc.pid), "start_s": round(started, 1)}
        stop(proc)
    if "peft" in phases:
        adapters = root / "peft"
        for n in names:
            export_prompt(prompt_dir / n, adapters / n, "peft")
            os.symlink(prompt_dir / n, adapters / n / "softprompt")
        port = free_port()
        proc, _ = start([sys.executable, str(HERE / "peft_server.py"), "--model", args.model, "--adapters", str(adapters),
                         "--port", str(port)], port, 600)
        valid = [r for r in plans["mixed"] if is_valid(r)]
        run_plan(port, warmup, args.clients, None, args.max_seconds)
        result["phases"]["peft"] = run_plan(port, valid, args.clients, None, args.max_seconds)
        result["phases"]["peft"]["server_rss_mib"] = rss_mib(proc.pid)
        stop(proc)

    p = result["phases"]
    speed = {k: v["valid_examples_per_s"] for k, v in p.items() if isinstance(v, dict)}
    result["ratios"] = {
        "mixed_over_single": round(speed["mixed"] / speed["single"], 3) if {"mixed", "single"} <= set(speed) else None,
        "mixed_over_peft": round(speed["mixed"] / speed["peft"], 2) if {"mixed", "peft"} <= set(speed) else None,
        "many_over_mixed": round(speed["many"] / speed["mixed"], 3) if {"mixed", "many"} <= set(speed) else None,
    }
    out = args.output or HERE / "results" / "serve_load-cpu.json"
    write_json(out, result)
    print(json.dumps(result["ratios"] | {k: {m: v.get(m) for m in ("valid_examples_per_s", "server_errors_5xx", "mismatches_with_predict",
                                                                      "latency_p50_s", "latency_p99_s")} for k, v in p.items() if isinstance(v, dict)},
                     indent=1))


if __name__ == "__main__":
    main()
