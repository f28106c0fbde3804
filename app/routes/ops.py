"""Probes, model information and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import runtime_of
from app.errors import ServiceError
from app.runtime import Runtime
from app.schemas import Liveness, Problem, Readiness

router = APIRouter(tags=["operations"])


@router.get("/livez", summary="Liveness: the process answers", response_model=Liveness)
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and warmed up",
    description="200 once the model is loaded, warmed up and checked reproducible; 503 before that and from the "
    "moment shutdown starts.",
    response_model=Readiness,
    responses={503: {"model": Problem, "description": "Not ready (starting or shutting down)"}},
)
async def readyz(request: Request) -> dict[str, str]:
    state = request.app.state
    runtime: Runtime | None = state.runtime
    restarting = runtime is not None and not runtime.available
    if runtime is None or not state.ready or state.draining or restarting:
        reason = "shutting down" if state.draining else "restarting" if restarting else "starting"
        raise ServiceError(503, f"not ready: {reason}", kind="not-ready", headers={"Retry-After": "1"})
    return {"status": "ready", "model_id": runtime.service.model_id}


@router.get(
    "/model",
    summary="The model's manifest",
    description="The manifest.json of the model directory served: id, latent_dim, prior, training data, config, "
    "metrics, artifact checksums and how to reproduce it.",
    responses={200: {"content": {"application/json": {"example": {"id": "cvae-ae80abbd7489", "latent_dim": 16}}}}},
)
async def model(request: Request) -> dict[str, Any]:
    return runtime_of(request.app).service.model.manifest


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "cvae_http_requests_total{...} 1.0"}}}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
