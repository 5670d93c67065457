"""OpenAI's response shapes for completions and chat, whole and as server-sent-event chunks.

Pure functions of the engine's results (work.py): the routes decide what to compute, these
decide how OpenAI's clients expect to read it (`choices`, `logprobs` with `tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`; chat's `logprobs.content`; `usage`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from .work import Completion, TokenLogprob


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def usage(results: Sequence[Completion], n: int) -> dict:
    """Input tokens count once per example (not per choice); generated tokens per choice."""
    read = sum(len(r.input_ids) for r in results[::n])
    generated = sum(r.generated for r in results)
    return {"prompt_tokens": read, "completion_tokens": generated, "total_tokens": read + generated}


def completion_logprobs(entries: Sequence[TokenLogprob | None], start: int = 0) -> dict:
    """The completions API's logprobs object; offsets count characters from `start`."""
    tokens, values, tops, offsets = [], [], [], []
    at = start
    for entry in entries:
        tokens.append(entry.text if entry else "")
        values.append(entry.logprob if entry else None)
        tops.append({text: value for _, text, value in entry.top} if entry and entry.top else None)
        offsets.append(at)
        at += len(entry.text) if entry else 0
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def completion_choice(index: int, result: Completion, prompt_text: str | None, want_logprobs: bool) -> dict:
    """One choice; with echo (`prompt_text` given) the text and the log-probabilities start with the input's.

    New tokens' offsets count from the end of the echoed text, as a stream's chunks do (the input's
    tokens decoded one by one need not add up to it: a character split across tokens).
    """
    text = (prompt_text or "") + result.text
    logprobs = None
    if want_logprobs:
        parts = [completion_logprobs(result.prompt_logprobs or [])] if prompt_text is not None else []
        parts.append(completion_logprobs(result.logprobs or [], len(prompt_text or "")))
        logprobs = {key: [value for part in parts for value in part[key]] for key in parts[-1]}  # each list concatenated
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": result.finish_reason}


def completion_body(model: str, choices: list[dict], usage_: dict) -> dict:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_}


def completion_chunk(id_: str, model: str, created: int, choice: int, text: str, logprobs: dict | None,
                     finish_reason: str | None) -> dict:
    return {"id": id_, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": choice, "logprobs": logprobs, "finish_reason": finish_reason}]}


def chat_token(entry: TokenLogprob) -> dict:
    def one(text: str, value: float | None) -> dict:
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8", "replace"))}

    return {**one(entry.text, entry.logprob), "top_logprobs": [one(text, value) for _, text, value in entry.top]}


def chat_choice(index: int, result: Completion, want_logprobs: bool) -> dict:
    logprobs = {"content": [chat_token(e) for e in result.logprobs or []]} if want_logprobs else None
    return {"index": index, "message": {"role": "assistant", "content": result.text}, "logprobs": logprobs,
            "finish_reason": result.finish_reason}


def chat_body(model: str, choices: list[dict], usage_: dict) -> dict:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_}


def chat_chunk(id_: str, model: str, created: int, choice: int, delta: dict, logprobs: dict | None,
               finish_reason: str | None) -> dict:
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
