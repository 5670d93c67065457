"""Operations: /healthz (is the engine alive and moving: 503 when dead or stuck), /readyz (will it take work:
503 while starting or draining), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .edge import ServerContext

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request):
    ctx: ServerContext = request.app.state.ctx
    health = ctx.engine.health()
    ok = health["alive"] and not health["stuck"]
    body = {"status": "ok" if ok else ("stuck" if health["alive"] else "dead"), "prompts": len(ctx.model.bank),
            "backbone": ctx.model.adapter.name, **health}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/readyz")
async def readyz(request: Request):
    ctx: ServerContext = request.app.state.ctx
    health = ctx.engine.health()
    ready = health["alive"] and not health["stuck"] and not health["closing"]
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus(request: Request):
    ctx: ServerContext = request.app.state.ctx
    ctx.metrics.prompts_loaded.set(len(ctx.model.bank))
    ctx.metrics.observe_cache(ctx.model.adapter.prefix_cache)
    return Response(ctx.metrics.text(), media_type="text/plain; version=0.0.4")
