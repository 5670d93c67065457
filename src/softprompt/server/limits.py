"""Guards in front of the API: a bound on the request body, and the endpoint names metrics count by."""

from __future__ import annotations

import json

ENDPOINTS = ("/v1/predict", "/v1/score", "/v1/completions", "/v1/prompts", "/v1/models", "/healthz", "/metrics")


def endpoint_label(path: str) -> str:
    """A bounded set of labels, so no client can grow the metrics by inventing paths."""
    if path in ENDPOINTS:
        return path
    return "/v1/prompts/{name}" if path.startswith("/v1/prompts/") else "other"


class BodyLimit:
    """ASGI middleware refusing a body over `max_bytes` with a 413, by its declared length or as it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": {"message": f"request body over {self.max_bytes} bytes (--max-body-mb)",
                                     "type": "request_too_large", "param": None, "code": 413}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
