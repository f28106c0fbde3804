"""The Open Inference Protocol's routes (/v2): server and model metadata, readiness, inference and the model repository.
Thin: a request's tensors are read by tensors.py, checked and turned into the operations' payloads by models.py, and
run through the scheduler lanes of the served model's runtime, as /generate's and /encode's are."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from app import paths
from app.api.deps import runtime_of
from app.api.routes.ops import model_not_ready, not_ready, reload_answer
from app.core.errors import ServiceError, unavailable, unknown_model
from app.oip.models import KINDS, max_elements, metadata, plan, protocol_model, protocol_names, refusal
from app.oip.tensors import HEADER_LENGTH, ProtocolError, read_request, write_response
from app.serving.runtime import Runtime
from app.serving.state import ServiceState
from app.settings import Settings
from app.telemetry.logs import MODEL_ID

EXTENSIONS = ["binary_tensor_data", "model_repository"]
BINARY = "application/octet-stream"


def bad(message: str) -> ServiceError:
    """A request the protocol cannot read or a model cannot take: 400 (sent as {"error": message}: errors.py)."""
    return ServiceError(400, message, kind="bad-inference-request", title="Bad inference request")


def served_model(state: ServiceState, model: str) -> tuple[str, str]:
    """The served model's name and the operation of the protocol model `model`; 404 for one the service does not
    serve."""
    found = protocol_model(model, state.models)
    if found is None:
        raise unknown_model(f"no model named {model!r:.80}; the models are {', '.join(protocol_names(state.models))}")
    return found


def served(request: Request, model: str, version: str | None) -> tuple[Runtime, str]:
    """The runtime serving the protocol model `model` (at `version`, when given) and the operation it runs; 404 for a
    model or version the service does not serve, 503 before the model is loaded."""
    state: ServiceState = request.app.state.service
    name, kind = served_model(state, model)
    runtime = runtime_of(state, name)
    if version is not None and version != runtime.card.id:
        raise unknown_model(f"model {model} has no version {version!r:.80}; it serves version {runtime.card.id}")
    return runtime, kind


async def infer(request: Request, model: str, version: str | None = None) -> Response:
    """The infer route's endpoint, and the fast path's (app/oip/fastpath.py)."""
    body = await request.body()
    runtime, kind = served(request, model, version)  # taken once the body is in, as the REST routes do
    card = runtime.card
    try:
        parsed = read_request(body, header_length(request), max_elements=max_elements(card))
        work = plan(card, runtime.serving, kind, parsed)
    except ProtocolError as e:
        raise bad(str(e)) from None
    except ServiceError as e:
        raise refusal(e) from None
    if len(work.payloads) == 1:  # most infers: their one job awaited as a REST route awaits it, without a task
        try:
            outcomes: list[Any] = [await runtime.run(work.op, work.payloads[0])]
        except ServiceError as e:
            raise refusal(e) from None
    else:
        outcomes = await asyncio.gather(*(runtime.run(work.op, p) for p in work.payloads), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, ServiceError):
            raise refusal(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
    MODEL_ID.set(card.id)
    content, length = write_response(model, card.id, parsed.id, work.finish(list(outcomes)), parameters=work.parameters)
    headers = {"X-Model-Id": card.id}
    if length is None:
        return Response(content, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(length)
    return Response(content, media_type=BINARY, headers=headers)


def router(server_version: str) -> APIRouter:
    routes = APIRouter(tags=["open inference protocol"])

    @routes.get(paths.V2, summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "cvae-digits", "version": server_version, "extensions": EXTENSIONS}

    @routes.get(paths.V2_LIVE, summary="Liveness")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @routes.get(paths.V2_READY, summary="Readiness: as /readyz")
    async def ready(request: Request) -> dict[str, Any]:
        reason = not_ready(request.app.state.service)
        if reason is not None:
            raise unavailable(f"not ready: {reason}", kind="not-ready")
        return {"ready": True}

    async def model_metadata(request: Request, model: str, version: str | None = None) -> dict[str, Any]:
        runtime, kind = served(request, model, version)
        return metadata(runtime.card, model, kind)

    async def model_ready(request: Request, model: str, version: str | None = None) -> dict[str, Any]:
        runtime, _ = served(request, model, version)
        reason = model_not_ready(request.app.state.service, runtime)
        if reason is not None:
            raise unavailable(f"model {model} is not ready: {reason}", kind="not-ready")
        return {"name": model, "ready": True}

    versioned = paths.V2_MODEL + "/versions/{version}"
    for base in (paths.V2_MODEL, versioned):
        routes.add_api_route(base, model_metadata, methods=["GET"], summary="Model metadata")
        routes.add_api_route(base + "/ready", model_ready, methods=["GET"], summary="Model readiness")
        routes.add_api_route(
            base + "/infer", infer, methods=["POST"], summary="Inference", response_class=Response,
            description="A request's tensors as JSON, or with the binary tensor data extension "
            "(Inference-Header-Content-Length); docs/api.md says what each model takes and gives.",
        )  # fmt: skip

    @routes.post(paths.V2_INDEX, summary="The model repository: every model and its state")
    async def index(request: Request) -> JSONResponse:
        only_ready = repository_body(await request.body()).get("ready", False)
        state: ServiceState = request.app.state.service
        entries = []
        for name, each in state.models.items():
            runtime = each.runtime
            reason = "loading" if runtime is None else model_not_ready(state, runtime)
            entries += [
                {"name": f"{name}-{kind}", "version": "" if runtime is None else runtime.card.id,
                 "state": "READY" if reason is None else "UNAVAILABLE", "reason": reason or ""}
                for kind in KINDS
            ]  # fmt: skip
        return JSONResponse([e for e in entries if e["state"] == "READY" or not only_ready])

    @routes.post(paths.V2_LOAD, summary="Reload a model's directory (admin key)")
    async def load(request: Request, model: str) -> dict[str, Any]:
        state, name = await repository_model(request, model)
        if state.reloaders is None:
            raise unavailable("the model is not loaded yet", kind="not-ready")
        reload_answer(await state.reloaders.reload(f"POST {request.url.path}", [name]))  # 409 when refused
        return {}

    @routes.post(paths.V2_UNLOAD, summary="Retire a model (admin key)")
    async def unload(request: Request, model: str) -> dict[str, Any]:
        state, name = await repository_model(request, model)
        why = (
            "the default model (the REST endpoints serve it without ?model=)" if name == state.default
            else "served from the configuration (CVAE_MODELS), which only a restart changes"
        )  # fmt: skip
        raise ServiceError(
            409, f"model {model} is {why}: it cannot be unloaded, only loaded again", kind="unload-refused",
            title="Unload refused",
        )  # fmt: skip

    return routes


async def repository_model(request: Request, model: str) -> tuple[ServiceState, str]:
    """What load and unload check first, in order: the admin key, the body, the protocol model (404 for one not
    served) and its served model's runtime (503 before it is loaded). -> (the service's state, the served model's
    name)."""
    admin_only(request)
    repository_body(await request.body())
    state: ServiceState = request.app.state.service
    name, _ = served_model(state, model)
    runtime_of(state, name)
    return state, name


def admin_only(request: Request) -> None:
    """The repository's load and unload exist only with admin keys (checked by the access middleware), as
    /admin/reload."""
    settings: Settings = request.app.state.settings
    if not settings.admin_api_keys.get_secret_value():
        raise HTTPException(404)


def header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise bad("Inference-Header-Content-Length must be a non-negative integer")
    return int(value)


def repository_body(body: bytes) -> dict[str, Any]:
    """A repository request's body: empty, or a small JSON object (its members: ready, parameters)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body) if len(body) <= 4096 else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("ready", False), bool):
        raise bad('a repository request\'s body must be empty or a small JSON object ({"ready": true})')
    return value
