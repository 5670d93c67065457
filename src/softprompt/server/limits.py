"""Guards in front of the API: a bound on the request body and on how long it may take to arrive, and the
bounded set of endpoint names that metrics are labelled by."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException

ENDPOINTS = ("/v1/predict", "/v1/score", "/v1/completions", "/v1/chat/completions", "/v1/prompts", "/v1/models",
             "/healthz", "/readyz", "/metrics")


def endpoint_label(path: str) -> str:
    """A bounded set of labels, so no client can grow the metrics by inventing paths."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/prompts/"):
        return "/v1/prompts/{name}"
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


def json_error(status: int, message: str, kind: str) -> tuple[list, bytes]:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets a 413 (by its declared length or as it streams in, chunked
    included), and one that has not fully arrived `timeout_s` after the request began gets a 408 (slow clients)."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 10.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, f"request body over {self.max_bytes} bytes (--max-body-mb)")
        seen, started, body_done = 0, False, False
        deadline = time.monotonic() + self.timeout_s

        async def counted_receive():
            nonlocal seen, body_done
            if body_done:  # afterwards only the disconnect comes, whenever the client goes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise _Slow(f"request body did not arrive within {self.timeout_s:g} s (--header-timeout-s)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(f"request body over {self.max_bytes} bytes (--max-body-mb)")
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except (_TooLarge, _Slow) as err:  # raised outside a route (a route's own handler answers them first)
            if not started:
                await self._refuse(send, err.status_code, err.detail)

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        headers, body = json_error(status, message, "request_too_large" if status == 413 else "timeout")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI re-raises it from its body parsing (any other error there becomes a 400)."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


class _Slow(HTTPException):
    def __init__(self, detail: str):
        super().__init__(408, detail)


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` requests in flight; past it a JSON 503 with `Retry-After: 1`.

    uvicorn's own `limit_concurrency` counts open connections, idle ones too, and past it answers
    every request, the health probe's included, with a plain-text 503: a few hundred idle sockets
    would take a replica out of its load balancer. Here only requests count, and /healthz,
    /readyz and /metrics are never refused; idle connections are bounded by the head timeout.
    """

    EXEMPT = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app, limit: int):
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.EXEMPT:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            headers, body = json_error(503, f"{self.in_flight} requests in flight (--limit-concurrency {self.limit}); retry later",
                                       "unavailable")
            await send({"type": "http.response.start", "status": 503, "headers": [*headers, (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
