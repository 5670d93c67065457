"""Load test of `softprompt serve`: throughput with prompts mixed, overload, slow clients, continuous batching,
streaming and a long run.

Localhost only, bounded in requests and time. It builds 8 prompts for the backbone (a trained
prompt from `--prompt` if given, the rest sampled-vocab initialisations with different seeds: the
server's cost does not depend on what the prompts learned), computes every valid request's
expected answer with `softprompt.evaluate.predict` (what `softprompt predict` prints), then starts
a server subprocess per phase and runs each phase's requests against it (`--phases`, comma-separated):

- `mixed`: 8 prompts loaded, each request names one of the 8 at random; 10% malformed requests.
- `single`: the same server, every request on one prompt: mixing costs nothing if mixed >= 0.9x this.
- `many`: a server with 10,000 prompts loaded (the 8, plus copies under other names, hard-linked
  on disk), the mixed plan again; its resident memory and start time are reported.
- `peft`: benchmarks/peft_server.py (same HTTP stack, PeftModel, `set_adapter` per request,
  requests serialised as PEFT requires) with the same 8 prompts exported to PEFT, the valid
  requests of the mixed plan.
- `flood`: 3,000 one-input rank requests at once at a server with `--max-queued 256`: status
  counts, Retry-After on the 503s, the server's peak RSS, /healthz sampled throughout, a normal
  request afterwards.
- `slow`: normal requests with 50 idle and 20 trickling (a head byte a second) connections held
  open, against the same requests on the quiet server; when the server closed the slow ones.
- `interleave`: one-input rank requests at a steady rate, idle and while long generations run
  (continuous batching: they should wait for a decode step, not a whole generation).
- `stream`: time to first token of streamed completions against the time to the whole answer.
- `soak`: the mixed plan in a loop for `--soak-minutes` (default 30); per minute RSS, p50/p99, errors.

`--server-src DIR` runs the servers from another checkout's `src` (e.g. the old server of a
`git worktree`); only the flags that checkout's `serve --help` lists are passed. Writes
results/serve_load-<device>.json (`--merge` keeps the phases of an earlier run of the same file).
load_phases.py holds the phases after `peft`; load_clients.py the request senders and their figures;
load_server.py the server subprocess and its memory.

    python benchmarks/serve_load.py --prompt runs/sst2-seed1 --requests 160
    python benchmarks/serve_load.py --phases flood,slow,interleave,stream --merge
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from load_clients import MALFORMED, is_valid, ratio, run_plan
from load_phases import PHASES, Bench
from load_server import ServerSource, free_port, rss_mib, start, stop
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


THROUGHPUT = ("mixed", "single", "many", "peft")
ALL = (*THROUGHPUT, *PHASES)
NEEDS_ANSWERS = {"mixed", "single", "many", "flood", "slow", "interleave", "soak"}


def ratios(p: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The headline ratios of the phases present; with a baseline (another server's results), new over old too."""
    speed = {k: p[k]["valid_examples_per_s"] for k in THROUGHPUT if isinstance(p.get(k), dict)}
    out: dict[str, Any] = {
        "mixed_over_single": round(speed["mixed"] / speed["single"], 3) if {"mixed", "single"} <= set(speed) else None,
        "mixed_over_peft": round(speed["mixed"] / speed["peft"], 2) if {"mixed", "peft"} <= set(speed) else None,
        "many_over_mixed": round(speed["many"] / speed["mixed"], 3) if {"mixed", "many"} <= set(speed) else None,
    }
    if "interleave" in p:
        out["interleave_p50_busy_over_idle"] = p["interleave"]["p50_busy_over_idle"]
        out["interleave_p99_busy_over_idle"] = p["interleave"]["p99_busy_over_idle"]
        old = baseline.get("interleave")
        if old:
            out["baseline_interleave_p99_busy_over_idle"] = old["p99_busy_over_idle"]
            out["interleave_busy_p99_over_baseline"] = ratio(p["interleave"]["during_long_generations"]["p99_s"],
                                                              old["during_long_generations"]["p99_s"])
            out["interleave_busy_p50_over_baseline"] = ratio(p["interleave"]["during_long_generations"]["p50_s"],
                                                              old["during_long_generations"]["p50_s"])
    if "flood" in p:
        f = p["flood"]
        out |= {"flood_share_503": ratio(f["refused_503"], f["requests"]), "flood_retry_after_share_of_503": f["retry_after_share_of_503"],
                "flood_other_5xx": f["other_5xx"], "flood_client_errors": f["client_errors"],
                "flood_rss_peak_growth_mib": f["server_rss_mib"]["peak_growth"],
                "flood_healthz_p99_s": f["healthz"]["latency"]["p99_s"], "flood_healthz_all_200_within_bound": f["healthz"]["all_200_within_bound"],
                "flood_normal_request_after_ok": f["normal_request_after"]["matches_predict"]}
    if "slow" in p:
        out["slow_p50_over_quiet"] = p["slow"]["p50_slow_over_quiet"]
        out["slow_p99_over_quiet"] = p["slow"]["p99_slow_over_quiet"]
    if "stream" in p:
        out["stream_ttft_over_total_p50"] = p["stream"]["ttft_over_total_p50"]
    if "soak" in p:
        out["soak_rss_growth_mib"] = p["soak"]["rss_growth_mib_first_to_last_minute"]
        out["soak_rss_growth_mib_of_minute_maxima"] = p["soak"]["rss_growth_mib_of_minute_maxima"]
        out["soak_p99_drift"] = p["soak"]["p99_drift_last_over_first"]
    return out


def summary(name: str, phase: dict[str, Any]) -> dict[str, Any]:
    """The few figures of a phase printed at the end (the JSON has them all)."""
    if name in THROUGHPUT:
        keys = ("valid_examples_per_s", "server_errors_5xx", "mismatches_with_predict", "latency_p50_s", "latency_p99_s")
        return {k: phase.get(k) for k in keys}
    if name == "flood":
        return {k: phase[k] for k in ("statuses", "retry_after_share_of_503", "other_5xx", "client_errors", "mismatches_with_predict",
                                      "server_rss_mib", "normal_request_after")} | {
            "healthz": {k: phase["healthz"][k] for k in ("statuses", "latency", "all_200_within_bound", "max_queued_examples",
                                                         "queue_never_over_max_queued", "max_oldest_job_age_s")}}
    if name == "slow":
        return {"quiet_p50_p99_s": [phase["quiet"]["latency_p50_s"], phase["quiet"]["latency_p99_s"]],
                "with_slow_clients_p50_p99_s": [phase["with_slow_clients"]["latency_p50_s"], phase["with_slow_clients"]["latency_p99_s"]],
                "5xx": [phase["quiet"]["server_errors_5xx"], phase["with_slow_clients"]["server_errors_5xx"]],
                "slow_clients": {k: v for k, v in phase["slow_clients"].items() if k in ("idle", "trickle")}}
    if name == "interleave":
        keep = ("statuses", "p50_s", "p99_s", "mismatches_with_predict", "sent_with_long_generation_in_flight")
        return {"idle": {k: phase["idle"][k] for k in keep}, "busy": {k: phase["during_long_generations"][k] for k in keep},
                "long": {k: phase["long_generations"][k] for k in ("completed", "statuses", "completion_tokens")}}
    if name == "stream":
        return {k: phase[k] for k in ("statuses", "time_to_first_token", "time_to_whole_answer", "stream_errors",
                                      "streamed_text_differs_from_unstreamed")}
    return {k: phase[k] for k in ("requests", "server_errors_5xx", "client_errors", "mismatches_with_predict",
                                  "rss_growth_mib_first_to_last_minute", "rss_growth_mib_of_minute_medians",
                                  "rss_growth_mib_of_minute_maxima", "p99_drift_last_over_first")} | {
        "per_minute": [[m["minute"], m["requests"], m["p50_s"], m["p99_s"], m["server_rss_mib_end"]] for m in phase["per_minute"]]}


def log_problems(root: Path) -> dict[str, Any]:
    """Per server started, its log's ERROR lines and tracebacks (the logs themselves go with the temporary folder)."""
    out = {}
    for log in sorted(root.glob("server-*.log")):
        lines = log.read_text(errors="replace").splitlines()
        errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
        out[log.stem.removeprefix("server-")] = {"lines": len(lines), "error_lines": len(errors),
                                                 "tracebacks": sum(1 for line in lines if line.startswith("Traceback")),
                                                 "first_errors": errors[:3]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--prompt", help="a trained prompt directory for this backbone, used as prompt p0")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160, help="requests per throughput phase (and the mixed plan's length)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--inputs-per-request", type=int, default=4)
    parser.add_argument("--malformed", type=float, default=0.1)
    parser.add_argument("--many", type=int, default=10000, help="prompts loaded in the 'many' phase")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--max-seconds", type=float, default=600, help="per measurement: requests not sent by then are skipped")
    parser.add_argument("--phases", default="mixed,single,many,peft", help=f"comma-separated, of {','.join(ALL)}; or 'all'")
    parser.add_argument("--server-src", type=Path, help="the src folder of another checkout: its server is the one measured")
    parser.add_argument("--baseline", type=Path, help="results JSON of another server (e.g. --server-src of the old code): "
                                                      "interleave ratios new over old are added")
    parser.add_argument("--merge", action="store_true", help="keep the phases already in --output that this run does not redo")
    parser.add_argument("--output", type=Path)
    flood = parser.add_argument_group("flood")
    flood.add_argument("--flood-requests", type=int, default=3000)
    flood.add_argument("--flood-max-queued", type=int, default=256, help="the server's --max-queued (examples)")
    flood.add_argument("--flood-limit-concurrency", type=int, default=4096, help="the server's --limit-concurrency")
    flood.add_argument("--flood-timeout-s", type=float, default=300, help="each request's client timeout; the flood's bound")
    flood.add_argument("--health-bound-s", type=float, default=2.0, help="/healthz must answer within this during the flood")
    slow = parser.add_argument_group("slow")
    slow.add_argument("--idle-connections", type=int, default=50)
    slow.add_argument("--trickle-connections", type=int, default=20)
    slow.add_argument("--header-timeout-s", type=float, help="the server's --header-timeout-s (default: the server's, 10 s)")
    slow.add_argument("--slow-requests", type=int, default=64, help="normal requests, quiet and with slow clients")
    slow.add_argument("--slow-clients", type=int, default=4, help="threads sending them")
    slow.add_argument("--slow-seconds", type=float, default=120, help="most seconds slow connections are held")
    inter = parser.add_argument_group("interleave")
    inter.add_argument("--interleave-requests", type=int, default=60, help="short requests, idle and during generations")
    inter.add_argument("--interleave-rate", type=float, default=2.0, help="short requests per second")
    inter.add_argument("--long-generations", type=int, default=4, help="clients each keeping one long generation running")
    inter.add_argument("--long-tokens", type=int, default=96, help="max_tokens of a long generation")
    stream = parser.add_argument_group("stream")
    stream.add_argument("--streams", type=int, default=4, help="concurrent streaming clients")
    stream.add_argument("--stream-requests", type=int, default=5, help="streamed completions per client, one after another")
    stream.add_argument("--stream-tokens", type=int, default=32)
    soak = parser.add_argument_group("soak")
    soak.add_argument("--soak-minutes", type=float, default=30)
    soak.add_argument("--soak-clients", type=int, help="steady concurrency (default: --clients)")
    args = parser.parse_args()
    phases = list(ALL) if args.phases == "all" else args.phases.split(",")
    unknown = set(phases) - set(ALL)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {','.join(ALL)}")
    out = args.output or HERE / "results" / "serve_load-cpu.json"
    root = Path(tempfile.mkdtemp(prefix="serve-load-"))
    source = ServerSource(args.server_src)
    prompt_dir, names = build_prompts(args.model, args.prompt, root, args.prompts)
    texts = [e.input for e in get_task("sst2").load("validation", Path(os.environ.get("SOFTPROMPT_DATA_DIR", "../shared/data")))[:200]]
    plans = {"mixed": plan(names, texts, args.requests, args.inputs_per_request, args.malformed, 0),
             "single": plan(names[:1], texts, args.requests, args.inputs_per_request, args.malformed, 0)}
    needed = [plans["mixed"]] + ([plans["single"]] if "single" in phases else [])
    answers = expected_outputs(args.model, prompt_dir, names, needed) if NEEDS_ANSWERS & set(phases) else {}
    env = environment(torch.device("cpu"))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["environment_variables"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "SOFTPROMPT_DATA_DIR", "PYTHONPATH")}
    result: dict[str, Any] = {"environment": env, "settings": settings,
                              "server": source.describe(), "phases": {}}
    prior = json.loads(out.read_text()) if args.merge and out.is_file() else {}
    result["phases"] = prior.get("phases", {})
    if "sigterm_exit_code" in prior:
        result["sigterm_exit_code"] = prior["sigterm_exit_code"]
    bench = Bench(args.model, prompt_dir, names, texts, plans, answers, args, source, root, len(get_task("sst2").labels))
    warmup = bench.valid[: args.clients]
    p = result["phases"]

    if args.baseline:
        old = json.loads(args.baseline.read_text())
        result["baseline"] = {"file": str(args.baseline), "server": old.get("server"),
                              "phases": {k: v for k, v in old["phases"].items() if k == "interleave"}}
    elif prior.get("baseline"):
        result["baseline"] = prior["baseline"]

    def record(name: str, figures: dict[str, Any]) -> None:
        """Keep a phase's figures and write the file at once (a long run that fails later keeps what it measured)."""
        p[name] = figures | {"command": env["command"], "server_commit": result["server"]["commit"]}
        print(f"{name}: {json.dumps(summary(name, p[name]))}", file=sys.stderr, flush=True)
        result["ratios"] = ratios(p, result.get("baseline", {}).get("phases", {}))
        result["server_logs"] = prior.get("server_logs", {}) | log_problems(root)
        write_json(out, result)

    if "mixed" in phases or "single" in phases:
        proc, port, started, _ = bench.serve("mixed", {})
        run_plan(port, warmup, args.clients, None, args.max_seconds)
        for name in ("single", "mixed"):
            if name in phases:
                figures = run_plan(port, plans[name], args.clients, answers, args.max_seconds)
                record(name, figures | {"server_rss_mib": rss_mib(proc.pid), "start_s": round(started, 1)})
        result["sigterm_exit_code"] = stop(proc)
    if "many" in phases:
        many = many_prompt_dir(prompt_dir, names, root, args.many)
        proc, port, started, _ = bench.serve("many", {}, prompts=many, timeout=1800)
        run_plan(port, warmup, args.clients, None, args.max_seconds)
        figures = run_plan(port, plans["mixed"], args.clients, answers, args.max_seconds)
        record("many", figures | {"prompts_loaded": args.many, "server_rss_mib": rss_mib(proc.pid), "start_s": round(started, 1)})
        stop(proc)
    if "peft" in phases:
        adapters = root / "peft"
        for n in names:
            export_prompt(prompt_dir / n, adapters / n, "peft")
            os.symlink(prompt_dir / n, adapters / n / "softprompt")
        port = free_port()
        proc, _ = start([sys.executable, str(HERE / "peft_server.py"), "--model", args.model, "--adapters", str(adapters),
                         "--port", str(port)], port, 600, log=root / "server-peft.log")
        run_plan(port, warmup, args.clients, None, args.max_seconds)
        figures = run_plan(port, bench.valid, args.clients, None, args.max_seconds)
        record("peft", figures | {"server_rss_mib": rss_mib(proc.pid)})
        stop(proc)
    for name, phase in PHASES.items():
        if name in phases:
            record(name, phase(bench))

    shutil.rmtree(root, ignore_errors=True)  # prompts, PEFT exports, server logs (kept when a server failed to start)
    print(json.dumps(result.get("ratios", {}) | {k: summary(k, v) for k, v in p.items() if k in ALL and k in phases}, indent=1))


if __name__ == "__main__":
    main()
