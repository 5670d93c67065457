"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions (both streamable), /v1/models.

Each loaded prompt is a "model": a request names the prompt, and the frozen backbone wears it.
Chat messages become the input text either by joining their texts (`--chat-format input`, the
default: a prompt was trained on task inputs, not on a chat layout) or through the backbone's
own chat template (`--chat-format backbone`, for prompts trained on templated inputs). Decoding
is greedy unless a temperature is given (`--default-temperature` sets the default), so the same
request answers as `softprompt predict` does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .edge import RequestError, ServerContext, error_body
from .errors import EngineError
from .openai_format import (
    chat_body,
    chat_choice,
    chat_chunk,
    chat_token,
    completion_body,
    completion_choice,
    completion_chunk,
    completion_logprobs,
    new_id,
    sse,
    usage,
)
from .schemas import ChatRequest, CompletionRequest, OpenAIRequest
from .streaming import EventStream
from .work import Item, Sampling

router = APIRouter()


def refuse_unsupported(body: OpenAIRequest) -> None:
    refused = body.refused()
    if refused:
        raise RequestError(400, f"field {refused[0]!r}: {refused[1]}", refused[0])


def sampling_for(ctx: ServerContext, body: OpenAIRequest, max_tokens: int, logprobs: int | None) -> Sampling:
    n = body.n or 1
    if n > ctx.config.max_choices:
        raise RequestError(400, f"field 'n' = {n}; at most {ctx.config.max_choices} (--max-choices)", "n")
    stops = body.stops()
    if len(stops) > 16 or any(not s for s in stops):
        raise RequestError(400, "field 'stop': at most 16 stop sequences, none empty", "stop")
    ctx.check_tokens(max_tokens, "max_tokens")
    temperature = ctx.config.default_temperature if body.temperature is None else body.temperature
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
                    seed=body.seed, stop=stops, n=n, logprobs=logprobs)


def token_item(ctx: ServerContext, model: str, ids: list[int], param: str) -> Item:
    """A token-id prompt, its ids checked here: echo decodes them before the engine sees the job."""
    vocabulary = len(ctx.model.adapter.tokenizer)
    if any(not 0 <= i < vocabulary for i in ids):
        raise RequestError(400, f"field {param!r} holds a token id outside the vocabulary (0..{vocabulary - 1})", param)
    return Item(model, ids=tuple(ids), param=param)


def completion_items(ctx: ServerContext, body: CompletionRequest) -> list[Item]:
    prompt = body.prompt
    if isinstance(prompt, str):
        ctx.check_texts([prompt], "prompt")
        return [Item(body.model, text=prompt, param="prompt")]
    if not prompt:
        raise RequestError(400, "field 'prompt' is an empty list", "prompt")
    if isinstance(prompt[0], int):
        return [token_item(ctx, body.model, prompt, "prompt")]
    if isinstance(prompt[0], str):
        ctx.check_texts(prompt, "prompt", many=True)
        return [Item(body.model, text=text, param=f"prompt.{i}") for i, text in enumerate(prompt)]
    if len(prompt) > ctx.config.max_inputs:
        raise RequestError(413, f"{len(prompt)} items in 'prompt'; at most {ctx.config.max_inputs} per request", "prompt")
    for i, ids in enumerate(prompt):
        if not ids:
            raise RequestError(400, f"field 'prompt.{i}' is empty", f"prompt.{i}")
    return [token_item(ctx, body.model, ids, f"prompt.{i}") for i, ids in enumerate(prompt)]


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    ctx: ServerContext = request.app.state.ctx
    refuse_unsupported(body)
    ctx.require_prompt(body.model, "model")
    items = completion_items(ctx, body)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens == 0 and not body.echo:
        raise RequestError(400, "field 'max_tokens' = 0 asks for nothing; it needs echo", "max_tokens")
    sampling = sampling_for(ctx, body, max_tokens, body.logprobs)
    job = ctx.job(kind="generate", items=items, sampling=sampling, echo=bool(body.echo), strict=True)
    tokenizer = ctx.model.adapter.tokenizer
    echoed = [(item.text if item.text is not None else tokenizer.decode(list(item.ids))) if body.echo else None for item in items]
    want_logprobs = body.logprobs is not None
    if body.stream:
        return StreamingResponse(stream_completion(ctx, body, job, echoed, want_logprobs), media_type="text/event-stream")
    results = await ctx.run(request, job)
    n = sampling.n
    choices = [completion_choice(k, r, echoed[k // n], want_logprobs) for k, r in enumerate(results)]
    return completion_body(body.model, choices, usage(results, n))


async def stream_completion(ctx: ServerContext, body: CompletionRequest, job, echoed: list, want_logprobs: bool
                            ) -> AsyncIterator[str]:
    stream = EventStream(ctx.engine, job)
    id_, created, n = new_id("cmpl"), int(time.time()), job.sampling.n
    offsets: dict[int, int] = {}
    try:
        async for event in stream:
            choice = event.choice
            if choice not in offsets:
                prefix = echoed[choice // n] or ""
                offsets[choice] = len(prefix)
                if prefix:  # the echoed input first, with its tokens' log-probabilities (computed before any event)
                    echoed_logprobs = completion_logprobs(job.prompt_logprobs[choice // n]) if want_logprobs else None
                    yield sse(completion_chunk(id_, body.model, created, choice, prefix, echoed_logprobs, None))
            logprobs = completion_logprobs([event.token], offsets[choice]) if want_logprobs and event.token else None
            if event.token:
                offsets[choice] += len(event.token.text)
            if event.text or event.finish_reason or logprobs:
                yield sse(completion_chunk(id_, body.model, created, choice, event.text, logprobs, event.finish_reason))
        results = stream.results()
        for k, result in enumerate(results):
            if k not in offsets:  # nothing generated (echo with max_tokens 0)
                text = (echoed[k // n] or "") + result.text
                logprobs = completion_logprobs(result.prompt_logprobs or []) if want_logprobs else None
                yield sse(completion_chunk(id_, body.model, created, k, text, logprobs, result.finish_reason))
        if body.stream_options and body.stream_options.include_usage:
            yield sse({"id": id_, "object": "text_completion", "created": created, "model": body.model, "choices": [],
                       "usage": usage(results, n)})
    except EngineError as err:
        yield sse(error_body(err))
    finally:
        stream.close()
    yield sse("[DONE]")


def chat_input(ctx: ServerContext, body: ChatRequest) -> str:
    """The messages as one input text, by `--chat-format`; every part must be text."""
    messages = []
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    where = f"messages.{i}.content.{j}"
                    raise RequestError(400, f"field {where!r}: only text parts are supported (got {part.type!r})", where)
            content = "\n".join(part.text for part in content)
        messages.append({"role": message.role, "content": content or ""})
    if ctx.config.chat_format == "backbone":
        text = ctx.model.adapter.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages if m["content"])
    ctx.check_texts([text], "messages", many=False)
    return text


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    ctx: ServerContext = request.app.state.ctx
    refuse_unsupported(body)
    ctx.require_prompt(body.model, "model")
    text = chat_input(ctx, body)
    max_tokens = body.max_completion_tokens or body.max_tokens or ctx.config.max_tokens_limit
    top = (body.top_logprobs or 0) if body.logprobs else None
    sampling = sampling_for(ctx, body, max_tokens, top)
    unset = body.max_completion_tokens is None and body.max_tokens is None  # then: what the context leaves, up to the limit
    job = ctx.job(kind="generate", items=[Item(body.model, text=text, param="messages")], sampling=sampling, strict=True,
                  fit_max_tokens=unset)
    if body.stream:
        return StreamingResponse(stream_chat(ctx, body, job), media_type="text/event-stream")
    results = await ctx.run(request, job)
    choices = [chat_choice(k, r, bool(body.logprobs)) for k, r in enumerate(results)]
    return chat_body(body.model, choices, usage(results, sampling.n))


async def stream_chat(ctx: ServerContext, body: ChatRequest, job) -> AsyncIterator[str]:
    stream = EventStream(ctx.engine, job)
    id_, created = new_id("chatcmpl"), int(time.time())
    started: set[int] = set()
    try:
        for choice in range(job.sampling.n):
            yield sse(chat_chunk(id_, body.model, created, choice, {"role": "assistant", "content": ""}, None, None))
            started.add(choice)
        async for event in stream:
            logprobs = {"content": [chat_token(event.token)]} if body.logprobs and event.token else None
            if event.text or logprobs:
                yield sse(chat_chunk(id_, body.model, created, event.choice, {"content": event.text}, logprobs, None))
            if event.finish_reason:
                yield sse(chat_chunk(id_, body.model, created, event.choice, {}, None, event.finish_reason))
        results = stream.results()
        if body.stream_options and body.stream_options.include_usage:
            yield sse({"id": id_, "object": "chat.completion.chunk", "created": created, "model": body.model, "choices": [],
                       "usage": usage(results, job.sampling.n)})
    except EngineError as err:
        yield sse(error_body(err))
    finally:
        stream.close()
    yield sse("[DONE]")


def model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "softprompt"}


@router.get("/v1/models")
async def list_models(request: Request):  # what an OpenAI client lists: each prompt is a model name
    ctx: ServerContext = request.app.state.ctx
    return {"object": "list", "data": [model_card(name) for name in ctx.model.bank.names]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request):
    ctx: ServerContext = request.app.state.ctx
    if model_id not in ctx.model.bank:
        raise RequestError(404, f"unknown model {model_id!r}; GET /v1/models lists them", "model")
    return model_card(model_id)
