"""Prompt routes: listing (with each prompt's content hash), and hot loading and unloading behind the admin token.

Loads and unloads run on the engine's thread between batches, so no batch sees a prompt
half-changed. With `--prompts-writable` they also write or remove the prompt folder, so
replicas that share (and `--watch-seconds` rescan) the directory follow.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from fastapi import APIRouter, Request

from ..errors import SoftpromptError
from .access import admin_problem
from .edge import RequestError, ServerContext
from .schemas import PromptUpload

router = APIRouter()


def require_admin(ctx: ServerContext, request: Request) -> None:
    problem = admin_problem(request.headers.get("authorization"), ctx.admin_token)
    if problem is not None:
        raise RequestError(*problem)


async def bank_change(ctx: ServerContext, fn):
    try:
        result = await asyncio.wrap_future(ctx.engine.call(fn))
    except SoftpromptError as err:
        raise RequestError(400, str(err)) from None
    except OSError as err:  # the prompt directory could not be written (--prompts-writable): the bank is unchanged
        raise RequestError(500, f"could not write the prompt directory: {err.strerror or err}") from None
    ctx.metrics.prompts_loaded.set(len(ctx.model.bank))
    return result


@router.get("/v1/prompts")
async def list_prompts(request: Request):
    ctx: ServerContext = request.app.state.ctx
    return {"prompts": await bank_change(ctx, lambda: [ctx.directory.describe(name) for name in ctx.model.bank.names])}


@router.put("/v1/prompts/{name}")
async def put_prompt(name: str, body: PromptUpload, request: Request):
    ctx: ServerContext = request.app.state.ctx
    require_admin(ctx, request)
    if (body.weights is None) != (body.metadata is None) or (body.folder is not None and body.weights is not None):
        raise RequestError(400, "send either 'folder' (inside the prompt directory) or both 'weights' (base64) and 'metadata'")
    if body.weights is not None:
        try:
            weights = base64.b64decode(body.weights, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "field 'weights' is not base64", "weights") from None
        load = lambda: ctx.directory.put_upload(name, weights, body.metadata)  # noqa: E731
    else:
        load = lambda: ctx.directory.put_folder(name, body.folder)  # noqa: E731
    await bank_change(ctx, load)
    return {"loaded": await bank_change(ctx, lambda: ctx.directory.describe(name))}


@router.delete("/v1/prompts/{name}")
async def delete_prompt(name: str, request: Request):
    ctx: ServerContext = request.app.state.ctx
    require_admin(ctx, request)
    ctx.require_prompt(name, "name")
    await bank_change(ctx, lambda: ctx.directory.remove(name))
    return {"unloaded": name}
