"""Probes, model information and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import paths
from app.api.deps import runtime_of
from app.api.schemas import Liveness, Problem, Readiness, ServedModels
from app.core.errors import ServiceError, unavailable
from app.serving.reload import ReloadOutcome
from app.serving.runtime import Runtime
from app.serving.state import ServiceState
from app.settings import Settings

router = APIRouter(tags=["operations"])


@router.get(paths.LIVEZ, summary="Liveness: the process answers", response_model=Liveness)
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    paths.READYZ,
    summary="Readiness: every model is loaded and warmed up",
    description="200 once every served model is loaded, warmed up and checked reproducible; 503 before that, while "
    "a model's inference process restarts, and from the moment shutdown starts. `model_id`: the default model's id; "
    "`models`: each served model's id, by name.",
    response_model=Readiness,
    responses={503: {"model": Problem, "description": "Not ready (starting, restarting or shutting down)"}},
)
async def readyz(request: Request) -> dict[str, Any]:
    state: ServiceState = request.app.state.service
    reason = not_ready(state)
    runtimes = {name: served.runtime for name, served in state.models.items()}
    if reason is not None or state.runtime is None:
        raise unavailable(f"not ready: {reason}", kind="not-ready")
    return {
        "status": "ready",
        "model_id": state.runtime.card.id,
        "models": {name: runtime.card.id for name, runtime in runtimes.items() if runtime is not None},
    }


def not_ready(state: ServiceState) -> str | None:
    """Why /readyz answers 503 (starting, restarting, shutting down): the first served model's reason, or None: every
    model is ready and it answers 200. The cvae_ready gauge reads it too."""
    for runtime in state.runtimes():
        reason = model_not_ready(state, runtime)
        if reason is not None:
            return reason
    return None


def model_not_ready(state: ServiceState, runtime: Runtime | None) -> str | None:
    """Why one served model is not ready (its runtime: None before it is loaded), or None: it is."""
    if state.draining:
        return "shutting down"
    if runtime is None or not state.ready:
        return "starting"
    return None if runtime.available else "restarting"


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


MODEL_QUERY = Query(
    description="the served model's name (GET /models lists them); without it, the default model",
    examples=["digits"],
)  # fmt: skip


@router.get(
    paths.MODEL,
    summary="The model: what it is and how well it does",
    description="The public part of the served model directory's manifest.json: id, latent_dim, image shape, "
    "labels (the class names, by class number), the preprocessing an upload gets (when the manifest names it), the "
    "prior's kind and sampling temperature, the training data's name and size, the network's configuration and the "
    "evaluation metrics; `classes`: each class's number (`label`) and `name`, what the operations (/generate, "
    "/encode, ...) take as `label`; and `reading`: the rule /encode reads classes by (`reader`, the model's reader "
    "network, or `generative`, Bayes' rule over the generative model, for a model directory without a reader). How it "
    "was made (command, training options, git commit, file checksums) is not shown. `?model=NAME`: that served "
    "model's (404 for a name not served).",
    responses={
        200: {
            "content": {"application/json": {"example": {"id": "cvae-ae80abbd7489", "latent_dim": 16}}},
            "headers": {"X-Model-Id": {"description": "the model described", "schema": {"type": "string"}}},
        },
        404: {"model": Problem, "description": "No model of that name is served"},
    },
)
async def model(
    request: Request, response: Response, model: Annotated[str | None, MODEL_QUERY] = None
) -> dict[str, Any]:
    card = runtime_of(request.app.state.service, model).card
    response.headers["X-Model-Id"] = card.id
    return {**public_manifest(card.manifest), "classes": card.classes, "reading": card.reading}


@router.get(
    paths.MODELS,
    summary="The served models",
    description="Every model the service serves (CVAE_MODELS, or the one of CVAE_MODEL_DIR), the default first: its "
    "`name` (what `?model=` takes), its `id`, its `classes` (as GET /model lists them) and whether it is the "
    "`default` (the one answering without `?model=`).",
    response_model=ServedModels,
)
async def models(request: Request) -> dict[str, Any]:
    state: ServiceState = request.app.state.service
    found = []
    for name in state.models:
        card = runtime_of(state, name).card
        found.append({"name": name, "id": card.id, "classes": card.classes, "default": name == state.default})
    return {"models": found}


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
async def reload(request: Request, model: str | None = None) -> dict[str, Any]:
    """Read every served model's directory again (only ?model=NAME's, given one), one model after another, and serve
    what each holds once it is checked and warmed up in a new inference process (SIGHUP reloads every model). 200 when
    every one switched; 409 (the reasons; each refused model's old one keeps serving) when any was refused."""
    settings: Settings = request.app.state.settings
    if not settings.admin_api_keys.get_secret_value():
        raise HTTPException(404)
    if request.method != "POST":
        raise HTTPException(405, headers={"Allow": "POST"})
    state: ServiceState = request.app.state.service
    if model is not None:
        runtime_of(state, model)  # 404 for a name not served
    if state.reloaders is None:
        raise unavailable("the model is not loaded yet", kind="not-ready")
    return reload_answer(await state.reloaders.reload(f"POST {request.url.path}", None if model is None else [model]))


def reload_answer(outcomes: list[ReloadOutcome]) -> dict[str, Any]:
    """Reloads' answer: one model's outcome as {model, outcome, model_id, previous_id}; several, as {outcome, models:
    [each one's]}. ServiceError 409 naming each refused model's reason when any was refused."""
    refused = [o for o in outcomes if o.outcome == "refused"]
    if refused:
        said = [f"{o.model}: reload refused, model {o.model_id} keeps serving: {o.reason}" for o in refused]
        said += [f"{o.model}: reloaded, model {o.model_id} serving (was {o.previous_id})" for o in outcomes
                 if o.outcome != "refused"]  # fmt: skip
        raise ServiceError(409, "; ".join(said), kind="reload-refused", title="Reload refused")
    answers = [{"model": o.model, "outcome": o.outcome, "model_id": o.model_id, "previous_id": o.previous_id}
               for o in outcomes]  # fmt: skip
    return answers[0] if len(answers) == 1 else {"outcome": "reloaded", "models": answers}
