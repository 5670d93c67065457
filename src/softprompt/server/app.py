"""The HTTP API: prediction, scoring and OpenAI-compatible completions over one frozen model, many prompts.

FastAPI (validation and errors from pydantic, an ASGI app uvicorn serves) on top of the batcher:
handlers check a request, hand its examples to the batcher and await the result, so concurrent
requests for different prompts share forwards. Every error is a JSON body
`{"error": {"message", "type", "param", "code"}}` in OpenAI's shape, a 4xx for a bad request,
and a 500 only for a batch that failed inside the model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import SoftpromptError
from ..evaluate import best_candidate
from ..model import PromptedModel
from .batcher import Batcher, Generated, Job, RequestError, log
from .config import ServeConfig
from .limits import BodyLimit, endpoint_label
from .metrics import ServerMetrics
from .prompts import PromptDirectory
from .schemas import CompletionRequest, PredictRequest, PromptUpload, ScoreRequest

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "request_too_large", 500: "server_error", 503: "unavailable"}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param, "code": status}
    return JSONResponse({"error": body}, status_code=status)


def validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """The first problem pydantic found, as one line naming the field."""
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    return (f"field {param!r}: {first.get('msg', 'invalid')}" if param else f"request body: {first.get('msg', 'invalid')}"), param


def create_app(model: PromptedModel, directory: PromptDirectory, config: ServeConfig) -> FastAPI:
    metrics = ServerMetrics()
    batcher = Batcher(model, config.max_batch_size, config.max_wait_ms / 1000, metrics, config.max_batch_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()  # after uvicorn has drained in-flight requests

    app = FastAPI(title="softprompt", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.model = batcher, metrics, model

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, err: RequestError):
        return error_response(err.status, err.message, err.param)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError):
        return error_response(400, *validation_message(err))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail))

    app.add_middleware(BodyLimit, max_bytes=int(config.max_body_mb * 2**20))  # inside the counting below

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - never a traceback to the client, never a dead server
            log.exception("%s %s failed", request.method, request.url.path)
            response = error_response(500, "internal error (see the server log)")
        label = endpoint_label(request.url.path)
        metrics.requests.labels(label, str(response.status_code)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - start)
        return response

    # ---- checks --------------------------------------------------------------------------
    def require_prompt(name: str, param: str = "prompt"):
        if not isinstance(name, str) or name not in model.bank:
            raise RequestError(404, f"unknown prompt {name!r}; GET /v1/prompts lists the loaded ones", param)
        return model.bank[name]

    def check_texts(texts: Sequence[str], param: str) -> None:
        if len(texts) > config.max_inputs:
            raise RequestError(413, f"{len(texts)} items in {param!r}; at most {config.max_inputs} per request", param)
        for i, text in enumerate(texts):
            where = f"{param}.{i}" if len(texts) > 1 or param.endswith("s") else param
            if len(text) > config.max_input_chars:
                raise RequestError(413, f"field {where!r} has {len(text)} characters; at most {config.max_input_chars}", where)
            if not text.strip():
                raise RequestError(400, f"field {where!r} is empty", where)

    def check_tokens(value: int, param: str) -> None:
        if value > config.max_tokens_limit:
            raise RequestError(400, f"field {param!r} = {value}; at most {config.max_tokens_limit}", param)

    def require_admin(request: Request) -> None:
        if config.admin_token is None:
            raise RequestError(403, "prompt loading and unloading are disabled; start the server with --admin-token")
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), config.admin_token.encode()):
            raise RequestError(401, "missing or wrong admin token (send 'Authorization: Bearer TOKEN')")

    async def run(job: Job) -> list:
        return await asyncio.wrap_future(batcher.submit(job))

    # ---- inference ---------------------------------------------------------------------------
    @app.post("/v1/predict")
    async def predict(body: PredictRequest):
        record = require_prompt(body.prompt)
        check_texts(body.inputs, "inputs")
        items = [(body.prompt, text) for text in body.inputs]
        if body.method == "generate":
            check_tokens(body.max_new_tokens, "max_new_tokens")
            results: list[Generated] = await run(Job("generate", items, max_new_tokens=body.max_new_tokens))
            return {"outputs": [r.text for r in results]}
        if not record.labels:
            raise RequestError(400, f"prompt {body.prompt!r} has no labels, so it cannot rank; use method 'generate'", "method")
        labels = list(record.labels)
        scores = await run(Job("rank", items, candidates=[labels] * len(items)))
        return {"outputs": [best_candidate(labels, row) for row in scores],
                "scores": [dict(zip(labels, row)) for row in scores]}

    @app.post("/v1/score")
    async def score(body: ScoreRequest):
        require_prompt(body.prompt)
        check_texts([body.input], "input")
        check_texts(body.candidates, "candidates")
        (row,) = await run(Job("rank", [(body.prompt, body.input)], candidates=[body.candidates]))
        return {"candidates": body.candidates, "scores": row, "best": best_candidate(body.candidates, row)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        refused = body.unsupported()
        if refused:
            raise RequestError(400, f"field {refused[0]!r}: {refused[1]}", refused[0])
        require_prompt(body.model, "model")
        texts = body.prompts()
        if not texts:
            raise RequestError(400, "field 'prompt' is an empty list", "prompt")
        check_texts(texts, "prompt")
        max_tokens = body.max_tokens or 16
        check_tokens(max_tokens, "max_tokens")
        results: list[Generated] = await run(Job("generate", [(body.model, t) for t in texts], max_new_tokens=max_tokens))
        eos = model.adapter.tokenizer.eos_token_id
        choices = []
        for index, result in enumerate(results):
            text, stopped = result.text, bool(result.ids) and result.ids[-1] == eos
            for stop in body.stops():
                if stop and stop in text:
                    text, stopped = text[: text.index(stop)], True
            choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": "stop" if stopped else "length"})
        generated = sum(len(r.ids) - (bool(r.ids) and r.ids[-1] == eos) for r in results)
        read = sum(r.input_tokens for r in results)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": body.model,
                "choices": choices, "usage": {"prompt_tokens": read, "completion_tokens": generated, "total_tokens": read + generated}}

    # ---- prompts ----------------------------------------------------------------------------------
    @app.get("/v1/prompts")
    async def list_prompts():
        return {"prompts": [directory.describe(name) for name in model.bank.names]}

    @app.get("/v1/models")
    async def list_models():  # what an OpenAI client lists: each prompt is a model name
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "softprompt"}
                                           for name in model.bank.names]}

    @app.put("/v1/prompts/{name}")
    async def put_prompt(name: str, body: PromptUpload, request: Request):
        require_admin(request)
        if (body.weights is None) != (body.metadata is None) or (body.folder is not None and body.weights is not None):
            raise RequestError(400, "send either 'folder' (inside the prompt directory) or both 'weights' (base64) and 'metadata'")
        if body.weights is not None:
            try:
                weights = base64.b64decode(body.weights, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(400, "field 'weights' is not base64", "weights") from None
            load = lambda: directory.load_upload(name, weights, body.metadata)  # noqa: E731
        else:
            load = lambda: directory.load_folder(name, body.folder)  # noqa: E731
        await bank_change(load)
        return {"loaded": directory.describe(name)}

    @app.delete("/v1/prompts/{name}")
    async def delete_prompt(name: str, request: Request):
        require_admin(request)
        require_prompt(name, "name")
        await bank_change(lambda: model.bank.remove(name))
        return {"unloaded": name}

    async def bank_change(fn) -> None:
        try:
            await asyncio.wrap_future(batcher.call(fn))
        except SoftpromptError as err:
            raise RequestError(400, str(err)) from None
        metrics.prompts_loaded.set(len(model.bank))

    # ---- operations ------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "prompts": len(model.bank), "backbone": model.adapter.name}

    @app.get("/metrics")
    async def prometheus():
        metrics.prompts_loaded.set(len(model.bank))
        metrics.observe_cache(model.adapter.prefix_cache)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    metrics.prompts_loaded.set(len(model.bank))
    return app
