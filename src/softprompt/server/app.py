"""The HTTP app: thin routes over the engine, with access checks, body limits and a log line per request.

FastAPI (validation from pydantic, an ASGI app uvicorn serves) on top of `engine.Engine`, which
knows no HTTP. Every error is a JSON body `{"error": {"message", "type", "param", "code"}}` in
OpenAI's shape: the engine's typed errors become status codes here (edge.py), a 4xx for a bad
request, 503 with Retry-After when overloaded, 504 past the request timeout, and a 500 only
for a request the model itself failed on.

Middleware, outermost first: the request log (an id per request, `X-Request-Id`, latency and
status counted, nothing unhandled reaches the client as a traceback), the bound on requests in
flight (health probes exempt), the access guard (Host names, API key), the body limit.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from ..errors import SoftpromptError
from ..model import PromptedModel
from . import routes_admin, routes_native, routes_openai, routes_ops
from .access import AccessGuard, allowed_hosts, resolve_secrets
from .config import ServeConfig
from .edge import RequestError, ServerContext, engine_error_response, error_response
from .engine import Engine, EngineSettings
from .errors import EngineError
from .limits import BodyLimit, ConcurrencyLimit, endpoint_label, json_error
from .metrics import ServerMetrics
from .prompts import PromptDirectory

log = logging.getLogger("softprompt.server")
access_log = logging.getLogger("softprompt.server.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """The first problem pydantic found, as one line naming the field."""
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    loc = [part for part in loc if not re.fullmatch(r"(str|int|list\[.*\]|function-.*|union\[.*\])", part)]  # union branches
    param = ".".join(loc) or None
    return (f"field {param!r}: {first.get('msg', 'invalid')}" if param else f"request body: {first.get('msg', 'invalid')}"), param


class RequestLog:
    """ASGI middleware: one log line per request with its id, status and time; the request counter and latency."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        status = 500
        started = False

        async def tagged_send(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged_send)
        except Exception:  # noqa: BLE001 - never a traceback to the client, never a dead server
            log.exception("request %s: %s %s failed", request_id, scope.get("method"), scope.get("path"))
            if not started:
                headers, body = json_error(500, "internal error (see the server log)", "server_error")
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
        finally:
            seconds = time.perf_counter() - start
            label = endpoint_label(scope.get("path", ""))
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(seconds)
            access_log.info("%s %s %s %d %.4f", request_id, scope.get("method"), scope.get("path"), status, seconds)


def create_app(model: PromptedModel, directory: PromptDirectory, config: ServeConfig) -> FastAPI:
    metrics = ServerMetrics()
    api_key, admin_token = resolve_secrets(config)
    if config.chat_format == "backbone" and not getattr(model.adapter.tokenizer, "chat_template", None):
        raise SoftpromptError(f"--chat-format backbone: {model.adapter.name!r} has no chat template")
    settings = EngineSettings(max_batch_size=config.max_batch_size, max_batch_tokens=config.max_batch_tokens,
                              max_wait_s=config.max_wait_ms / 1000, max_running=config.max_running, max_queued=config.max_queued,
                              stuck_seconds=config.stuck_seconds, hook_every_s=config.watch_seconds,
                              trim_every_s=config.trim_memory_s)
    engine = Engine(model, settings, metrics, between_batches=directory.rescan if config.watch_seconds > 0 else None)
    ctx = ServerContext(model, directory, config, engine, metrics, admin_token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # uvicorn has drained in-flight requests for --drain-seconds (and cancelled the rest, which cancels
        # their jobs): what is left to finish is short, so the whole stop stays under the drain deadline
        engine.close(min(5.0, config.drain_seconds))

    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="softprompt", lifespan=lifespan, **docs)
    app.state.ctx, app.state.engine, app.state.metrics, app.state.model = ctx, engine, metrics, model

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, err: RequestError):
        return error_response(err.status, err.message, err.param)

    @app.exception_handler(EngineError)
    async def on_engine_error(request: Request, err: EngineError):
        return engine_error_response(err)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError):
        return error_response(400, *validation_message(err))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail))

    for module in (routes_native, routes_openai, routes_admin, routes_ops):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=int(config.max_body_mb * 2**20), timeout_s=config.header_timeout_s)
    app.add_middleware(AccessGuard, api_key=api_key, hosts=allowed_hosts(config), admin_token=admin_token)
    app.add_middleware(ConcurrencyLimit, limit=config.limit_concurrency)
    app.add_middleware(RequestLog, metrics=metrics)
    metrics.prompts_loaded.set(len(model.bank))
    return app
