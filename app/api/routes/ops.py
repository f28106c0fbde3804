"""Probes, model information and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import paths
from app.api.deps import runtime_of
from app.api.schemas import Liveness, Problem, Readiness
from app.core.errors import ServiceError, unavailable
from app.serving.reload import Reloader
from app.serving.runtime import Runtime
from app.serving.state import ServiceState
from app.settings import Settings

router = APIRouter(tags=["operations"])


@router.get(paths.LIVEZ, summary="Liveness: the process answers", response_model=Liveness)
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    paths.READYZ,
    summary="Readiness: the model is loaded and warmed up",
    description="200 once the model is loaded, warmed up and checked reproducible; 503 before that and from the "
    "moment shutdown starts.",
    response_model=Readiness,
    responses={503: {"model": Problem, "description": "Not ready (starting or shutting down)"}},
)
async def readyz(request: Request) -> dict[str, str]:
    state: ServiceState = request.app.state.service
    reason = not_ready(state)
    if reason is not None or state.runtime is None:
        raise unavailable(f"not ready: {reason}", kind="not-ready")
    return {"status": "ready", "model_id": state.runtime.card.id}


def not_ready(state: ServiceState) -> str | None:
    """Why /readyz answers 503 (starting, restarting, shutting down), or None: it answers 200. The cvae_ready gauge
    reads it too."""
    runtime: Runtime | None = state.runtime
    restarting = runtime is not None and not runtime.available
    if runtime is None or not state.ready or state.draining or restarting:
        return "shutting down" if state.draining else "restarting" if restarting else "starting"
    return None


# What GET /model shows of the model directory's manifest.json: what a client needs to use the model and judge it.
# Everything else stays private, by default (a field added to the manifest later is not shown until listed here): how
# it was made (the training command with its paths, the training options, the git commit), the data files' names
# and checksums, the artifacts' checksums, the torch version.
PUBLIC_MANIFEST = ("format_version", "id", "latent_dim", "image_shape", "labels", "preprocessing", "pixel_model",
                   "training_prior", "metrics", "created")  # fmt: skip
PUBLIC_PARTS = {"prior": ("kind", "temperature", "components_per_class"), "data": ("name", "count", "val_size"),
                "config": ("model",)}  # fmt: skip


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    shown = {key: manifest[key] for key in PUBLIC_MANIFEST if key in manifest}
    for part, keys in PUBLIC_PARTS.items():
        if isinstance(manifest.get(part), dict):
            shown[part] = {key: manifest[part][key] for key in keys if key in manifest[part]}
    return shown


@router.get(
    paths.MODEL,
    summary="The model: what it is and how well it does",
    description="The public part of the served model directory's manifest.json: id, latent_dim, image shape, "
    "labels (the class names, by class number), the preprocessing an upload gets (when the manifest names it), the "
    "prior's kind and sampling temperature, the training data's name and size, the network's configuration and the "
    "evaluation metrics; `classes`: each class's number (`label`) and `name`, what the operations (/generate, "
    "/encode, ...) take as `label`; and `reading`: the rule /encode reads classes by (`reader`, the model's reader "
    "network, or `generative`, Bayes' rule over the generative model, for a model directory without a reader). How it "
    "was made (command, training options, git commit, file checksums) is not shown.",
    responses={200: {"content": {"application/json": {"example": {"id": "cvae-ae80abbd7489", "latent_dim": 16}}}}},
)
async def model(request: Request) -> dict[str, Any]:
    card = runtime_of(request.app.state.service).card
    return {**public_manifest(card.manifest), "classes": card.classes, "reading": card.reading}


@router.get(
    paths.METRICS,
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "cvae_http_requests_total{...} 1.0"}}}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# Every method routed here, so that without CVAE_ADMIN_API_KEYS each is the 404 of a path that does not exist (a
# POST-only route would answer other methods 405, telling that it does); not in the public document either.
@router.api_route(paths.RELOAD, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def reload(request: Request) -> dict[str, str]:
    """Read CVAE_MODEL_DIR again and serve what it holds once it is checked and warmed up in a new inference process
    (SIGHUP does the same). 200 when switched, 409 (the reason; the old model keeps serving) when refused."""
    settings: Settings = request.app.state.settings
    if not settings.admin_api_keys.get_secret_value():
        raise HTTPException(404)
    if request.method != "POST":
        raise HTTPException(405, headers={"Allow": "POST"})
    reloader: Reloader | None = request.app.state.service.reloader
    if reloader is None:
        raise unavailable("the model is not loaded yet", kind="not-ready")
    outcome = await reloader.reload("POST /admin/reload")
    if outcome.outcome == "refused":
        raise ServiceError(409, f"reload refused, model {outcome.model_id} keeps serving: {outcome.reason}",
                           kind="reload-refused", title="Reload refused")  # fmt: skip
    return {"outcome": outcome.outcome, "model_id": outcome.model_id, "previous_id": outcome.previous_id}
