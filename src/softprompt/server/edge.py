"""The HTTP edge of the engine: the typed errors as status codes, awaiting a job while watching the client.

Everything HTTP-specific about running a job lives here, so routes read as: check the request,
build a job, `await ctx.run(request, job)`, shape the answer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from ..model import PromptedModel
from .config import ServeConfig
from .engine import Engine
from .errors import (
    BatchFailed,
    Cancelled,
    ContextTooLong,
    DeadlineExceeded,
    EngineError,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    UnknownPrompt,
)
from .metrics import ServerMetrics
from .prompts import PromptDirectory
from .work import Job

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout", 413: "request_too_large", 499: "cancelled",
               500: "server_error", 503: "unavailable", 504: "timeout"}
STATUS = {InvalidInput: 400, ContextTooLong: 400, UnknownPrompt: 404, Overloaded: 503, ShuttingDown: 503,
          DeadlineExceeded: 504, BatchFailed: 500, Cancelled: 499}


class RequestError(Exception):
    """A request the edge refuses before any job: HTTP `status`, a message, and the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None, kind: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = {"message": message, "type": kind or ERROR_TYPES.get(status, "invalid_request_error"), "param": param, "code": status}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def engine_error_response(err: EngineError) -> JSONResponse:
    status = STATUS.get(type(err), 500)
    headers = {"Retry-After": str(math.ceil(err.retry_after))} if isinstance(err, Overloaded) else None
    kind = err.kind if isinstance(err, ContextTooLong) else None
    return error_response(status, err.message, err.param, kind, headers)


def error_body(err: EngineError) -> dict:
    """The error object a stream sends when its job fails after the 200 went out."""
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": STATUS.get(type(err), 500)}}


@dataclass
class ServerContext:
    model: PromptedModel
    directory: PromptDirectory
    config: ServeConfig
    engine: Engine
    metrics: ServerMetrics
    admin_token: str | None = None

    def require_prompt(self, name: object, param: str = "prompt"):
        if not isinstance(name, str) or name not in self.model.bank:
            raise RequestError(404, f"unknown prompt {name!r}; GET /v1/prompts lists the loaded ones", param)
        self.metrics.prompt_requests.labels(name).inc()
        return self.model.bank[name]

    def check_texts(self, texts: Sequence[str], param: str, many: bool | None = None) -> None:
        limit = self.config.max_inputs
        if len(texts) > limit:
            raise RequestError(413, f"{len(texts)} items in {param!r}; at most {limit} per request", param)
        for i, text in enumerate(texts):
            where = f"{param}.{i}" if (many if many is not None else len(texts) > 1 or param.endswith("s")) else param
            if len(text) > self.config.max_input_chars:
                raise RequestError(413, f"field {where!r} has {len(text)} characters; at most {self.config.max_input_chars}", where)
            if not text.strip():
                raise RequestError(400, f"field {where!r} is empty", where)

    def check_tokens(self, value: int, param: str) -> None:
        if value > self.config.max_tokens_limit:
            raise RequestError(400, f"field {param!r} = {value}; at most {self.config.max_tokens_limit} (--max-tokens-limit)", param)

    def job(self, **fields) -> Job:
        return Job(timeout_s=self.config.request_timeout_s, **fields)

    async def run(self, request: Request, job: Job):
        """The job's result; the job is dropped (never computed, or stopped between steps) if the client goes away."""
        waiter = asyncio.wrap_future(self.engine.submit(job))
        watcher = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # uvicorn cancels handlers still running at the drain deadline
            job.cancel()
            raise
        finally:
            watcher.cancel()
        if not waiter.done():
            job.cancel()
            raise Cancelled("client went away")
        return waiter.result()  # raises the job's typed error, which the app's handler turns into a status


async def client_gone(request: Request) -> bool:
    """Returns once the client disconnects (after the body was read, receive() yields only that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return True
