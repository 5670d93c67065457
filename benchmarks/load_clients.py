"""The load clients of benchmarks/serve_load.py and the figures they report: requests sent from threads
(`run_plan`, `paced`), one POST per connection from a bare asyncio loop (`post_once`), idle and
trickling sockets (`SlowClients`), back-to-back long completions (`LongGenerations`), a streamed
completion read chunk by chunk (`stream_once`); plus the request plan's malformed bodies, the check
of an answer against `predict`, and percentiles.

Apart from the phases (load_phases.py) because they only send and time requests: none starts a
server or knows a phase's settings. Every load goes to 127.0.0.1 and every loop is bounded in count
and time. Latencies are wall-clock seconds measured by the client; percentiles are the nearest-rank
ones `run_plan` has always used (`sorted[min(n - 1, int(n * q))]`).
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

MALFORMED = [
    {"inputs": ["a fine film"]},  # no prompt
    {"prompt": "no-such-prompt", "inputs": ["a fine film"]},
    {"prompt": "p0", "inputs": "not a list"},
    {"prompt": "p0", "inputs": ["   "]},
    {"prompt": "p0", "inputs": ["x"], "method": "beam"},
    "{not json",
]
NEVER_STOP = "<<softprompt-benchmark: no such stop>>"  # a stop sequence no generation produces


def is_valid(request: Any) -> bool:
    return isinstance(request, dict) and request not in MALFORMED


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))], 4) if values else None


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_s": percentile(values, 0.5), "p99_s": percentile(values, 0.99),
            "max_s": round(max(values), 4) if values else None, "mean_s": round(sum(values) / len(values), 4) if values else None}


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def safe_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def matches(request: dict, body: Any, answers: dict) -> bool:
    """Whether a 200's outputs are what `predict` gives for the request's (prompt, input, method)."""
    expected = [answers[(request["prompt"], t, request["method"])] for t in request["inputs"]]
    return isinstance(body, dict) and body.get("outputs") == expected


def count(items) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(str(i) for i in items).items())}


def run_plan(port: int, requests: list[Any], clients: int, answers: dict | None, max_seconds: float) -> dict[str, Any]:
    """Send the plan from `clients` threads; latency, throughput, status counts and mismatches with predict."""
    url = f"http://127.0.0.1:{port}/v1/predict"
    deadline = time.perf_counter() + max_seconds

    def send(request: Any) -> tuple[Any, Any, float, Any]:
        if time.perf_counter() > deadline:
            return request, -1, 0.0, None
        begin = time.perf_counter()
        try:
            with httpx.Client(timeout=600) as client:
                if isinstance(request, str):
                    r = client.post(url, content=request.encode(), headers={"content-type": "application/json"})
                else:
                    r = client.post(url, json=request)
        except httpx.HTTPError as err:
            return request, type(err).__name__, time.perf_counter() - begin, None
        return request, r.status_code, time.perf_counter() - begin, safe_json(r)

    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, requests))
    wall = time.perf_counter() - begin
    done = [r for r in results if r[1] != -1]
    valid = [r for r in done if is_valid(r[0])]
    latencies = sorted(r[2] for r in valid if r[1] == 200)
    mismatches = sum(status != 200 or not matches(request, body, answers) for request, status, _, body in valid) if answers else None
    statuses = count(r[1] for r in done)
    examples = sum(len(r[0]["inputs"]) for r in valid if r[1] == 200)
    return {
        "requests_sent": len(done), "requests_skipped_for_time": len(results) - len(done), "wall_s": round(wall, 2),
        "valid_examples_per_s": round(examples / wall, 2), "statuses": statuses,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "client_errors": sum(n for s, n in statuses.items() if not s.isdigit()),
        "malformed_answered_4xx": sum(1 for r in done if not is_valid(r[0]) and isinstance(r[1], int) and 400 <= r[1] < 500),
        "malformed_sent": sum(1 for r in done if not is_valid(r[0])),
        "latency_p50_s": percentile(latencies, 0.5), "latency_p99_s": percentile(latencies, 0.99),
        "mismatches_with_predict": mismatches,
    }


# ---- one request per connection, for the flood ----------------------------------------------------
async def post_once(port: int, path: str, body: dict, timeout_s: float) -> tuple[Any, dict[str, str], Any]:
    """One POST on its own connection (`Connection: close`): (status or the client error's name, headers, JSON body).

    A bare asyncio client: httpx.AsyncClient spends ~3 ms of CPU per request, which at 3,000 at once
    on a small machine makes the client, not the server, the bottleneck (measured: 8.7 s of client
    CPU for 3,000 requests against 0.5 s for this)."""
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    writers = []

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(head + data)
        await writer.drain()
        return await reader.read()  # to EOF: the server closes after answering

    try:
        response = await asyncio.wait_for(exchange(), timeout_s)
    except (OSError, asyncio.TimeoutError) as err:
        return type(err).__name__, {}, None
    finally:
        for writer in writers:
            writer.close()
    top, _, payload = response.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    try:
        status: Any = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return "BadResponse", {}, None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = None
    return status, headers, parsed


# ---- slow clients: idle and trickling connections ----------------------------------------------------
class SlowClients(threading.Thread):
    """`idle` connections that send nothing and `trickle` ones that send a request head one byte a second, each
    replaced when the server closes it, until stopped or `max_s`; records how long each lived and how it ended."""

    HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 100_000

    def __init__(self, port: int, idle: int, trickle: int, max_s: float, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.port, self.wanted, self.max_s, self.every_s = port, {"idle": idle, "trickle": trickle}, max_s, every_s
        self.stopping = threading.Event()
        self.live: dict[int, dict] = {}
        self.closed: list[dict] = []
        self.open_failures: Counter = Counter()
        self.opened = 0
        self.began = time.monotonic()

    def _open(self, kind: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError as err:
            self.open_failures[type(err).__name__] += 1
            return
        sock.setblocking(False)
        now = time.monotonic()
        self.live[sock.fileno()] = {"kind": kind, "sock": sock, "opened": now, "next": now, "sent": 0, "received": 0}
        self.opened += 1

    def run(self) -> None:
        self.began = time.monotonic()
        for kind, n in self.wanted.items():
            for _ in range(n):
                self._open(kind)
        while not self.stopping.is_set() and time.monotonic() < self.began + self.max_s:
            poller = select.poll()
            for fd in self.live:
                poller.register(fd, select.POLLIN)
            events = dict(poller.poll(50)) if self.live else (time.sleep(0.05) or {})
            now = time.monotonic()
            for fd, conn in list(self.live.items()):
                ended = None
                if fd in events:
                    try:
                        data = conn["sock"].recv(65536)
                        conn["received"] += len(data)
                        ended = None if data else "closed"
                    except BlockingIOError:
                        pass
                    except OSError as err:
                        ended = type(err).__name__
                if ended is None and conn["kind"] == "trickle" and now >= conn["next"]:
                    try:
                        conn["sock"].send(self.HEAD[conn["sent"]: conn["sent"] + 1])
                        conn["sent"] += 1
                        conn["next"] = now + self.every_s
                    except BlockingIOError:
                        pass
                    except OSError as err:
                        ended = type(err).__name__
                if ended is not None:
                    del self.live[fd]
                    conn["sock"].close()
                    self.closed.append({"kind": conn["kind"], "lived_s": now - conn["opened"], "how": ended,
                                        "bytes_received": conn["received"], "bytes_sent": conn["sent"]})
                    if not self.stopping.is_set():
                        self._open(conn["kind"])
        for conn in self.live.values():
            conn["sock"].close()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"opened": self.opened, "open_failures": dict(self.open_failures)}
        for kind, wanted in self.wanted.items():
            closed = [c for c in self.closed if c["kind"] == kind]
            lived = [c["lived_s"] for c in closed]
            out[kind] = {"held_open": wanted, "closed_by_server": len(closed),
                         "open_when_stopped": sum(1 for c in self.live.values() if c["kind"] == kind),
                         "closed_after_s": {"min": round(min(lived), 2), "p50": percentile(lived, 0.5), "max": round(max(lived), 2)}
                         if lived else None,
                         "how_closed": count(c["how"] for c in closed),
                         "answered_bytes_before_close": sum(c["bytes_received"] for c in closed)}
        return out


# ---- for interleave: paced short requests and long generations -----------------------------------------
def paced(port: int, requests: list[dict], rate: float, answers: dict, max_seconds: float,
          in_flight: Callable[[], int] | None = None) -> list[dict]:
    """Send `requests` at `rate` per second (open loop: each latency runs from its scheduled send time)."""
    url = f"http://127.0.0.1:{port}/v1/predict"
    results: list[dict | None] = [None] * len(requests)
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

    def send(i: int, request: dict, scheduled: float) -> None:
        longs = in_flight() if in_flight else 0
        try:
            r = client.post(url, json=request)
            status, body = r.status_code, safe_json(r)
        except httpx.HTTPError as err:
            status, body = type(err).__name__, None
        results[i] = {"status": status, "latency_s": time.perf_counter() - scheduled, "long_in_flight": longs,
                      "matches_predict": status == 200 and matches(request, body, answers)}

    begin = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        for i, request in enumerate(requests):
            scheduled = begin + i / rate
            if scheduled > begin + max_seconds:
                break
            time.sleep(max(0.0, scheduled - time.perf_counter()))
            pool.submit(send, i, request, scheduled)
    client.close()
    return [r for r in results if r is not None]


def paced_report(results: list[dict]) -> dict[str, Any]:
    ok = [r["latency_s"] for r in results if r["status"] == 200]
    return {"requests": len(results), "statuses": count(r["status"] for r in results), **stats(ok),
            "mismatches_with_predict": sum(not r["matches_predict"] for r in results),
            "sent_with_long_generation_in_flight": sum(1 for r in results if r["long_in_flight"] > 0)}


class LongGenerations:
    """`count` clients, each sending the same long completion again as soon as the last one ends, until stopped."""

    def __init__(self, port: int, body: dict, count: int, max_seconds: float):
        self.url, self.body, self.deadline = f"http://127.0.0.1:{port}/v1/completions", body, time.perf_counter() + max_seconds
        self.lock, self.stopping, self.running = threading.Lock(), threading.Event(), 0
        self.results: list[dict] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]

    def in_flight(self) -> int:
        return self.running

    def _loop(self) -> None:
        with httpx.Client(timeout=600) as client:
            while not self.stopping.is_set() and time.perf_counter() < self.deadline:
                with self.lock:
                    self.running += 1
                begin = time.perf_counter()
                try:
                    r = client.post(self.url, json=self.body)
                    status, body = r.status_code, safe_json(r) or {}
                except httpx.HTTPError as err:
                    status, body = type(err).__name__, {}
                finally:
                    with self.lock:
                        self.running -= 1
                tokens = (body.get("usage") or {}).get("completion_tokens")
                self.results.append({"status": status, "begin": begin, "seconds": time.perf_counter() - begin, "tokens": tokens})

    def __enter__(self) -> LongGenerations:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(max(1.0, self.deadline - time.perf_counter()) + 60)

    def report(self) -> dict[str, Any]:
        done = [r for r in self.results if r["status"] == 200]
        tokens = [r["tokens"] for r in done if isinstance(r["tokens"], int)]
        seconds = [r["seconds"] for r in done]
        span = max((r["begin"] + r["seconds"] for r in done), default=0) - min((r["begin"] for r in done), default=0)
        return {"clients": len(self.threads), "body": self.body, "completed": len(done), "statuses": count(r["status"] for r in self.results),
                "completion_tokens": {"mean": round(sum(tokens) / len(tokens), 1), "min": min(tokens), "max": max(tokens)} if tokens else None,
                "latency": stats(seconds),
                "tokens_per_s_per_client": round(sum(tokens) / sum(seconds), 2) if tokens and sum(seconds) else None,
                "tokens_per_s_all_clients": round(sum(tokens) / span, 2) if tokens and span else None}


# ---- for stream: one streamed completion --------------------------------------------------------------
def stream_once(client: httpx.Client, url: str, body: dict) -> dict[str, Any]:
    begin = time.perf_counter()
    first, parts, errors = None, [], []
    with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            r.read()
            return {"status": r.status_code, "ttft_s": None, "total_s": time.perf_counter() - begin, "text": None, "errors": []}
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            payload = json.loads(data)
            if "error" in payload:
                errors.append(payload["error"].get("type"))
            for choice in payload.get("choices") or []:
                if choice.get("text"):
                    first = first if first is not None else time.perf_counter() - begin
                    parts.append(choice["text"])
    return {"status": 200, "ttft_s": first, "total_s": time.perf_counter() - begin, "text": "".join(parts), "errors": errors,
            "chunks": len(parts)}
