"""softprompt's own inference routes: /v1/predict (rank or generate, answers equal `softprompt predict`) and
/v1/score (candidate log-likelihoods)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..data import unformat_target
from ..evaluate import best_candidate
from .edge import RequestError, ServerContext
from .schemas import PredictRequest, ScoreRequest
from .work import Item, Sampling

router = APIRouter()


@router.post("/v1/predict")
async def predict(body: PredictRequest, request: Request):
    ctx: ServerContext = request.app.state.ctx
    record = ctx.require_prompt(body.prompt)
    ctx.check_texts(body.inputs, "inputs")
    items = [Item(body.prompt, text=text, param=f"inputs.{i}") for i, text in enumerate(body.inputs)]
    if body.method == "generate":
        ctx.check_tokens(body.max_new_tokens, "max_new_tokens")
        job = ctx.job(kind="generate", items=items, sampling=Sampling(max_tokens=body.max_new_tokens))
        results = await ctx.run(request, job)
        return {"outputs": [unformat_target(r.text, record.metadata.target_format) for r in results]}
    if not record.labels:
        raise RequestError(400, f"prompt {body.prompt!r} has no labels, so it cannot rank; use method 'generate'", "method")
    labels = list(record.labels)
    scores = await ctx.run(request, ctx.job(kind="rank", items=items, candidates=[labels] * len(items)))
    return {"outputs": [best_candidate(labels, row) for row in scores],
            "scores": [dict(zip(labels, row)) for row in scores]}


@router.post("/v1/score")
async def score(body: ScoreRequest, request: Request):
    ctx: ServerContext = request.app.state.ctx
    ctx.require_prompt(body.prompt)
    ctx.check_texts([body.input], "input")
    ctx.check_texts(body.candidates, "candidates")
    job = ctx.job(kind="rank", items=[Item(body.prompt, text=body.input)], candidates=[body.candidates])
    (row,) = await ctx.run(request, job)
    return {"candidates": body.candidates, "scores": row, "best": best_candidate(body.candidates, row)}
