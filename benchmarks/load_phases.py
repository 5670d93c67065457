"""The serving phases of benchmarks/serve_load.py beyond throughput: overload (`flood`), slow clients
(`slow`), short requests during long generations (`interleave`), time to first token (`stream`) and a
long run (`soak`), each `fn(bench) -> figures`, listed in `PHASES`.

Apart from the clients (load_clients.py) and the server process (load_server.py) because this is
where a phase's settings, its server flags and the shape of its JSON live: each phase starts its own
server through `Bench.serve`, drives it with the clients, and reduces what they saw to figures.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from load_clients import (
    NEVER_STOP,
    LongGenerations,
    SlowClients,
    count,
    is_valid,
    matches,
    paced,
    paced_report,
    percentile,
    post_once,
    ratio,
    run_plan,
    safe_json,
    stats,
    stream_once,
)
from load_server import Sampler, ServerSource, free_port, own_maxrss_mib, rss_mib, start, stop


@dataclass
class Bench:
    """What every phase needs: the backbone, the prompts, the plans with their expected answers, the settings."""

    model: str
    prompt_dir: Path
    names: list[str]
    texts: list[str]
    plans: dict[str, list[Any]]
    answers: dict[tuple, str]
    args: Any
    source: ServerSource
    root: Path
    labels: int = 2  # candidates of a one-input rank request: what it costs on the server's queue

    def serve(self, phase: str, options: dict[str, Any], prompts: Path | None = None, timeout: float = 600
              ) -> tuple[subprocess.Popen, int, float, list[str]]:
        port = free_port()
        base = {"--max-batch-size": self.args.max_batch_size, "--max-wait-ms": self.args.max_wait_ms}
        command, dropped = self.source.command(self.model, prompts or self.prompt_dir, port, base | options)
        proc, started = start(command, port, timeout, self.source.env, self.root / f"server-{phase}.log")
        return proc, port, started, dropped

    @property
    def valid(self) -> list[dict]:
        return [r for r in self.plans["mixed"] if is_valid(r)]

    def short_requests(self, count: int, seed: int) -> list[dict]:
        """One-input rank requests over the (prompt, input) pairs of the mixed plan, whose answers are known."""
        pairs = sorted({(r["prompt"], t) for r in self.valid if r["method"] == "rank" for t in r["inputs"]})
        rng = random.Random(seed)
        return [{"prompt": p, "inputs": [t], "method": "rank"} for p, t in (rng.choice(pairs) for _ in range(count))]

    def warm(self, port: int) -> None:
        run_plan(port, self.valid[: self.args.clients], self.args.clients, None, self.args.max_seconds)


# ---- flood: far more requests at once than the queue holds -------------------------------------------------
async def _flood(port: int, bodies: list[dict], timeout_s: float, in_flight: list[int]) -> tuple[list[tuple], int]:
    async def one(body: dict) -> tuple:
        in_flight[0] += 1
        begin = time.perf_counter()
        try:
            status, headers, parsed = await post_once(port, "/v1/predict", body, timeout_s)
            return body, status, time.perf_counter() - begin, headers.get("retry-after"), parsed
        finally:
            in_flight[0] -= 1

    tasks = [asyncio.ensure_future(one(b)) for b in bodies]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s + 30)
    for task in pending:
        task.cancel()
    return [t.result() for t in tasks if t in done], len(pending)


def health_probe(client: httpx.Client, bound_s: float, in_flight: list[int]) -> dict[str, Any]:
    """One /healthz answer, how long it took, and the client's requests in flight (the most of before and after)."""
    before = in_flight[0]
    begin = time.perf_counter()
    try:
        r = client.get("/healthz", timeout=max(5 * bound_s, 5))
        status, body = r.status_code, safe_json(r) or {}
    except httpx.HTTPError as err:
        status, body = type(err).__name__, {}
    return {"status": status, "latency_s": round(time.perf_counter() - begin, 4), "queued_examples": body.get("queued_examples"),
            "oldest_job_age_s": body.get("oldest_job_age_s"), "running_sequences": body.get("running_sequences"),
            "client_in_flight": max(before, in_flight[0])}


def flood(bench: Bench) -> dict[str, Any]:
    """`--flood-requests` one-input rank requests at once at a server with a small `--max-queued`."""
    args = bench.args
    options = {"--max-queued": args.flood_max_queued, "--limit-concurrency": args.flood_limit_concurrency}
    proc, port, _, dropped = bench.serve("flood", options)
    bench.warm(port)
    bodies = bench.short_requests(args.flood_requests, seed=3)
    rss = Sampler(lambda: rss_mib(proc.pid), 0.2)
    in_flight = [0]
    health_client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    health = Sampler(lambda: health_probe(health_client, args.health_bound_s, in_flight), 0.25, limit=4000)
    rss_before, client_before = rss_mib(proc.pid), own_maxrss_mib()
    rss.start()
    health.start()
    begin = time.perf_counter()
    results, unfinished = asyncio.run(_flood(port, bodies, args.flood_timeout_s, in_flight))
    wall = time.perf_counter() - begin
    rss_samples, health_samples = rss.finish(), health.finish()
    after_health = health_probe(health_client, args.health_bound_s, in_flight)
    health_client.close()
    normal = bench.valid[0]
    after = run_plan(port, [normal], 1, bench.answers, args.max_seconds)
    rss_after = rss_mib(proc.pid)
    stop(proc)

    statuses = count(r[1] for r in results)
    refused = [r for r in results if r[1] == 503]
    with_retry = [r for r in refused if r[3] is not None]
    engine_refusals = [r for r in refused if isinstance(r[4], dict) and "error" in r[4]]
    ok = [r for r in results if r[1] == 200]
    waits = [int(r[3]) for r in with_retry if str(r[3]).isdigit()]
    peak = max((v for _, v in rss_samples), default=rss_before)
    answered = [s for _, s in health_samples]
    health_latencies = [s["latency_s"] for s in answered]
    queued = [s["queued_examples"] for s in answered if isinstance(s["queued_examples"], int)]
    step = max(1, len(answered) // 200)
    return {
        "requests": len(bodies), "wall_s": round(wall, 2), "max_queued": args.flood_max_queued,
        "limit_concurrency": args.flood_limit_concurrency, "server_flags_not_supported": dropped,
        "statuses": statuses, "answered_200": len(ok), "refused_503": len(refused),
        "refused_503_with_retry_after": len(with_retry), "retry_after_share_of_503": ratio(len(with_retry), len(refused)),
        "retry_after_s": {"min": min(waits), "max": max(waits)} if waits else None,
        "refused_503_by_engine_json": len(engine_refusals), "refused_503_other": len(refused) - len(engine_refusals),
        "other_5xx": sum(1 for r in results if isinstance(r[1], int) and r[1] >= 500 and r[1] != 503),
        "client_errors": sum(1 for r in results if not isinstance(r[1], int)), "unfinished": unfinished,
        "mismatches_with_predict": sum(not matches(r[0], r[4], bench.answers) for r in ok),
        "latency_200": stats([r[2] for r in ok]), "latency_503": stats([r[2] for r in refused]),
        "server_rss_mib": {"before": rss_before, "peak": peak, "after": rss_after, "peak_growth": round(peak - rss_before, 1),
                           "samples": len(rss_samples), "interval_s": 0.2},
        "client_maxrss_mib": {"before": client_before, "after": own_maxrss_mib()},
        "healthz": {
            "samples": len(answered), "statuses": count(s["status"] for s in answered),
            "latency": stats(health_latencies), "bound_s": args.health_bound_s,
            "all_200_within_bound": bool(answered) and all(s["status"] == 200 and s["latency_s"] <= args.health_bound_s
                                                           for s in answered),
            "max_queued_examples": max(queued, default=None), "samples_with_queue": sum(1 for q in queued if q > 0),
            "queue_never_over_max_queued": all(q <= args.flood_max_queued for q in queued) if queued else None,
            "queue_never_over_client_in_flight": all(s["queued_examples"] <= bench.labels * s["client_in_flight"] for s in answered
                                                     if isinstance(s["queued_examples"], int)) if queued else None,
            "max_oldest_job_age_s": max((s["oldest_job_age_s"] for s in answered if s["oldest_job_age_s"] is not None), default=None),
            "after_flood": after_health,
            "timeline": [[t, s["status"], s["latency_s"], s["queued_examples"], s["oldest_job_age_s"], s["client_in_flight"]]
                         for t, s in health_samples[::step]],
            "timeline_columns": ["t_s", "status", "latency_s", "queued_examples", "oldest_job_age_s", "client_in_flight"],
        },
        "normal_request_after": {"statuses": after["statuses"], "latency_s": after["latency_p50_s"],
                                 "matches_predict": after["mismatches_with_predict"] == 0},
    }


# ---- slow: idle and trickling connections ------------------------------------------------------------
def slow(bench: Bench) -> dict[str, Any]:
    """Normal requests on a quiet server, then with idle and trickling connections held open (replaced as closed)."""
    args = bench.args
    proc, port, _, dropped = bench.serve("slow", {"--header-timeout-s": args.header_timeout_s})
    bench.warm(port)
    requests = (bench.valid * (1 + args.slow_requests // max(1, len(bench.valid))))[: args.slow_requests]
    quiet = run_plan(port, requests, args.slow_clients, bench.answers, args.max_seconds)
    expected = args.header_timeout_s or 10.0  # the server's default --header-timeout-s
    pressure = SlowClients(port, args.idle_connections, args.trickle_connections, max_s=min(args.slow_seconds, args.max_seconds))
    pressure.start()
    time.sleep(1.0)  # every slow connection open (and tricklers a byte in) before the measured requests start
    busy = run_plan(port, requests, args.slow_clients, bench.answers, args.max_seconds)
    hold_until = pressure.began + expected + 5  # long enough to see the server close the first slow connections
    while pressure.is_alive() and time.monotonic() < hold_until:
        time.sleep(0.2)
    pressure.stopping.set()
    pressure.join(30)
    result = {"server_flags_not_supported": dropped, "header_timeout_s": expected,
              "header_timeout_from": "--header-timeout-s" if args.header_timeout_s else "the server's default (10 s)",
              "quiet": quiet, "with_slow_clients": busy, "slow_clients": pressure.report(),
              "p50_slow_over_quiet": ratio(busy["latency_p50_s"], quiet["latency_p50_s"]),
              "p99_slow_over_quiet": ratio(busy["latency_p99_s"], quiet["latency_p99_s"]),
              "server_rss_mib": rss_mib(proc.pid)}
    stop(proc)
    return result


# ---- interleave: short rank requests while long generations run ----------------------------------------------
def completion_body(bench: Bench, tokens: int, stream: bool = False) -> dict:
    """A long completion on a sampled-vocab prompt; the old server takes only model, prompt, max_tokens, temperature."""
    text = max(bench.texts, key=len)
    body = {"model": bench.names[1 % len(bench.names)], "prompt": text, "max_tokens": tokens, "temperature": 0}
    if bench.source.continuous:
        body["stop"] = [NEVER_STOP]
        if stream:
            body["stream"] = True
    elif stream:
        body["stream"] = True  # the old server refuses it: the phase then records the refusal
    return body


def wait_running(port: int, want: int, seconds: float) -> int | None:
    """Until /healthz reports `want` running sequences (servers without the field: a fixed second)."""
    end = time.perf_counter() + seconds
    seen = None
    while time.perf_counter() < end:
        try:
            seen = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json().get("running_sequences")
        except (httpx.HTTPError, ValueError):
            seen = None
        if seen is None:
            time.sleep(1.0)
            return None
        if seen >= want:
            return seen
        time.sleep(0.05)
    return seen


def interleave(bench: Bench) -> dict[str, Any]:
    """p50/p99 of one-input rank requests at a steady rate on an idle server, then while long generations run."""
    args = bench.args
    proc, port, _, dropped = bench.serve("interleave", {})
    bench.warm(port)
    body = completion_body(bench, args.long_tokens)
    httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=600)  # generation warmed too
    shorts = bench.short_requests(args.interleave_requests, seed=4)
    idle = paced(port, shorts, args.interleave_rate, bench.answers, args.max_seconds)
    with LongGenerations(port, body, args.long_generations, args.max_seconds * 2) as longs:
        running = wait_running(port, args.long_generations, 30)
        busy = paced(port, shorts, args.interleave_rate, bench.answers, args.max_seconds, longs.in_flight)
    idle_report, busy_report = paced_report(idle), paced_report(busy)
    result = {"server_flags_not_supported": dropped, "rate_per_s": args.interleave_rate,
              "idle": idle_report, "during_long_generations": busy_report, "long_generations": longs.report(),
              "running_sequences_seen_at_start": running,
              "p50_busy_over_idle": ratio(busy_report["p50_s"], idle_report["p50_s"]),
              "p99_busy_over_idle": ratio(busy_report["p99_s"], idle_report["p99_s"]),
              "server_rss_mib": rss_mib(proc.pid)}
    stop(proc)
    return result


# ---- stream: time to first token ----------------------------------------------------------------------
def stream(bench: Bench) -> dict[str, Any]:
    """`--streams` concurrent clients, each streaming `--stream-requests` completions one after another; then
    the same bodies unstreamed, whose texts the streams must equal."""
    args = bench.args
    proc, port, _, dropped = bench.serve("stream", {})
    bench.warm(port)
    url = f"http://127.0.0.1:{port}/v1/completions"
    streamed = completion_body(bench, args.stream_tokens, stream=True)
    plain = {k: v for k, v in streamed.items() if k != "stream"}
    httpx.post(url, json=plain, timeout=600)
    deadline = time.perf_counter() + args.max_seconds

    def client_loop(send: Callable[[httpx.Client], dict]) -> list[dict]:
        out = []
        with httpx.Client(timeout=600) as client:
            for _ in range(args.stream_requests):
                if time.perf_counter() > deadline:
                    break
                try:
                    out.append(send(client))
                except httpx.HTTPError as err:
                    out.append({"status": type(err).__name__, "ttft_s": None, "total_s": None, "text": None, "errors": []})
        return out

    def unstreamed(client: httpx.Client) -> dict:
        begin = time.perf_counter()
        r = client.post(url, json=plain)
        body = safe_json(r) or {}
        return {"status": r.status_code, "total_s": time.perf_counter() - begin,
                "text": (body.get("choices") or [{}])[0].get("text"), "tokens": (body.get("usage") or {}).get("completion_tokens")}

    with ThreadPoolExecutor(args.streams) as pool:
        streams = [r for rs in pool.map(lambda _: client_loop(lambda c: stream_once(c, url, streamed)), range(args.streams)) for r in rs]
    with ThreadPoolExecutor(args.streams) as pool:
        plains = [r for rs in pool.map(lambda _: client_loop(unstreamed), range(args.streams)) for r in rs]
    stop(proc)
    ok = [s for s in streams if s["status"] == 200]
    texts = {p["text"] for p in plains if p["status"] == 200}
    ttft = [s["ttft_s"] for s in ok if s["ttft_s"] is not None]
    total = [s["total_s"] for s in ok]
    return {"server_flags_not_supported": dropped, "streams": args.streams, "requests_per_stream": args.stream_requests,
            "body": streamed, "statuses": count(s["status"] for s in streams), "stream_errors": sum(len(s["errors"]) for s in streams),
            "chunks_with_text_mean": round(sum(s["chunks"] for s in ok) / len(ok), 1) if ok else None,
            "time_to_first_token": stats(ttft), "time_to_whole_answer": stats(total),
            "ttft_over_total_p50": ratio(percentile(ttft, 0.5), percentile(total, 0.5)),
            "unstreamed": {"statuses": count(p["status"] for p in plains), **stats([p["total_s"] for p in plains if p["status"] == 200]),
                           "completion_tokens": sorted({p.get("tokens") for p in plains if p["status"] == 200} - {None})},
            "streamed_text_differs_from_unstreamed": sum(1 for s in ok if s["text"] not in texts) if texts else None,
            "unstreamed_texts_distinct": len(texts)}


# ---- soak: the mixed plan for minutes -----------------------------------------------------------------
def soak(bench: Bench) -> dict[str, Any]:
    """The mixed plan in a loop from `--soak-clients` keep-alive clients for `--soak-minutes`; per minute (by send
    time): server RSS, p50/p99 of valid 200s, status and error counts."""
    args = bench.args
    proc, port, _, dropped = bench.serve("soak", {})
    bench.warm(port)
    url = f"http://127.0.0.1:{port}/v1/predict"
    plan, minutes = bench.plans["mixed"], max(1, math.ceil(args.soak_minutes))
    seconds = args.soak_minutes * 60
    buckets = [{"latencies": [], "statuses": Counter(), "mismatches": 0} for _ in range(minutes)]
    lock, ticket = threading.Lock(), itertools.count()
    rss = Sampler(lambda: rss_mib(proc.pid), 1.0)
    rss_start = rss_mib(proc.pid)
    rss.start()
    begin = time.perf_counter()

    def client_loop() -> None:
        with httpx.Client(timeout=600) as client:
            while (sent := time.perf_counter()) < begin + seconds:
                request = plan[next(ticket) % len(plan)]
                try:
                    if isinstance(request, str):
                        r = client.post(url, content=request.encode(), headers={"content-type": "application/json"})
                    else:
                        r = client.post(url, json=request)
                    status, body = r.status_code, safe_json(r)
                except httpx.HTTPError as err:
                    status, body = type(err).__name__, None
                latency = time.perf_counter() - sent
                bucket = buckets[min(minutes - 1, int((sent - begin) // 60))]
                with lock:
                    bucket["statuses"][str(status)] += 1
                    if is_valid(request):
                        if status == 200:
                            bucket["latencies"].append(latency)
                        bucket["mismatches"] += not (status == 200 and matches(request, body, bench.answers))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(args.soak_clients or args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 660)
    samples = rss.finish()
    stop(proc)
    per_minute = []
    for m, bucket in enumerate(buckets):
        window = [v for t, v in samples if m * 60 <= t < (m + 1) * 60] or [float("nan")]
        statuses = dict(sorted(bucket["statuses"].items()))
        per_minute.append({"minute": m + 1, "requests": sum(statuses.values()), "statuses": statuses,
                           "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
                           "client_errors": sum(n for s, n in statuses.items() if not s.isdigit()),
                           "mismatches_with_predict": bucket["mismatches"],
                           "p50_s": percentile(bucket["latencies"], 0.5), "p99_s": percentile(bucket["latencies"], 0.99),
                           "server_rss_mib_end": window[-1], "server_rss_mib_median": sorted(window)[len(window) // 2],
                           "server_rss_mib_max": max(window)})
    first, last = per_minute[0], per_minute[-1]
    return {"server_flags_not_supported": dropped, "minutes": args.soak_minutes, "clients": args.soak_clients or args.clients,
            "server_rss_mib_at_start": rss_start, "per_minute": per_minute,
            "rss_growth_mib_first_to_last_minute": round(last["server_rss_mib_end"] - first["server_rss_mib_end"], 1),
            "rss_growth_mib_of_minute_medians": round(last["server_rss_mib_median"] - first["server_rss_mib_median"], 1),
            "rss_growth_mib_of_minute_maxima": round(last["server_rss_mib_max"] - first["server_rss_mib_max"], 1),
            "p99_drift_last_over_first": ratio(last["p99_s"], first["p99_s"]),
            "server_errors_5xx": sum(m["server_errors_5xx"] for m in per_minute),
            "client_errors": sum(m["client_errors"] for m in per_minute),
            "mismatches_with_predict": sum(m["mismatches_with_predict"] for m in per_minute),
            "requests": sum(m["requests"] for m in per_minute)}


PHASES = {"flood": flood, "slow": slow, "interleave": interleave, "stream": stream, "soak": soak}
