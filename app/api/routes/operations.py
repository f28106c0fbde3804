"""Every operation's POST route (app/operations/registry.py), built from the operation object: its body (JSON, or a
multipart form whose bytes fields are files), its OpenAPI description, and one way to answer it, respond(), which the
fast path (app/api/fastpath.py) calls too."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from app.api.deps import runtime_of
from app.api.parsing import StrictRoute
from app.api.schemas import Problem, ValidationProblem
from app.core.errors import ServiceError
from app.operations.base import Operation
from app.serving.runtime import Runtime
from app.telemetry.logs import MODEL_ID

PNG = "image/png"
JSON = "application/json"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not valid JSON, or the upload is corrupt"},
    404: {"model": Problem, "description": "No model of the name given as ?model= is served"},
    413: {"model": Problem, "description": "The body is larger than this endpoint reads (CVAE_MAX_UPLOAD_BYTES at "
          "most), or an upload's image has more than CVAE_MAX_IMAGE_PIXELS pixels"},
    415: {"model": Problem, "description": "The body is not sent in the media type this endpoint reads"},
    422: {"model": ValidationProblem, "description": "A field is missing, malformed or out of range for the model"},
    503: {"model": Problem, "description": "Overloaded, starting or shutting down: retry"},
}  # fmt: skip
Op = Operation[Any, Any, Any]
# ?model=NAME: which served model answers (GET /models lists them); without it, the default one.
MODEL_PARAM = inspect.Parameter(
    "model", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[str | None, Query(description="the served model that answers (GET /models lists them); "
                                                       "without it, the default model", examples=["digits"])],
)  # fmt: skip


@lru_cache(maxsize=256)
def wants_json(accept: str | None) -> bool:
    """Content negotiation (RFC 9110 12.5.1) between image/png (preferred on ties) and application/json."""
    if not accept or accept == "*/*":
        return False
    q = {PNG: 0.0, JSON: 0.0}
    specificity = {PNG: -1, JSON: -1}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        for target in (PNG, JSON):
            level = 2 if media == target else 1 if media == target.split("/")[0] + "/*" else 0 if media == "*/*" else -1
            if level > specificity[target]:
                specificity[target], q[target] = level, weight
    if q[PNG] <= 0 and q[JSON] <= 0:
        raise ServiceError(406, f"this endpoint answers {PNG} or {JSON}; Accept was {accept!r}", kind="not-acceptable")
    return q[JSON] > q[PNG]


async def respond(runtime: Runtime, op: Op, body: Any, accept: str | None) -> Response:
    """The answer to a validated request of op: the routes', and the fast path's."""
    as_json = wants_json(accept) if op.negotiates else True
    payload = op.prepare(runtime.serving, body, as_json)
    result = await runtime.run(op, payload)
    MODEL_ID.set(runtime.card.id)
    answer = op.answer(runtime.card, payload, result, as_json)
    if isinstance(answer.content, bytes):
        return Response(answer.content, media_type=answer.media_type, headers=answer.headers)
    return JSONResponse(answer.content, headers=answer.headers)


def router(operations: tuple[Op, ...]) -> APIRouter:
    """One POST route per operation, at its path."""
    routes = APIRouter(route_class=StrictRoute)
    for op in operations:
        responses: dict[int | str, dict[str, Any]] = {**ERRORS, 200: {"model": op.response_model}}
        if op.negotiates:
            responses[200] = {
                "description": "A greyscale PNG grid; with `Accept: application/json`, the PNG as base64 plus the "
                "latents and labels of its tiles.",
                "model": op.response_model,
                "content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
                "headers": {"X-Seed": {"description": "the seed used, when one was", "schema": {"type": "integer"}}},
            }
            responses[406] = {"model": Problem, "description": "Accept allows neither image/png nor application/json"}
        responses[200].setdefault("headers", {})["X-Model-Id"] = {
            "description": "the model that answered",
            "schema": {"type": "string"},
        }
        routes.add_api_route(
            op.path, form_endpoint(op) if op.form else json_endpoint(op), methods=["POST"], tags=[op.name],
            summary=op.summary, description=op.description, response_class=Response, responses=responses,
        )  # fmt: skip
    return routes


def json_endpoint(op: Op) -> Callable[..., Awaitable[Response]]:
    async def endpoint(body: Any, request: Request, model: str | None) -> Response:
        return await respond(runtime_of(request.app.state.service, model), op, body, request.headers.get("accept"))

    body = Annotated[op.Request, Body(openapi_examples=op.examples or None)]  # type: ignore[name-defined]
    param = inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body)
    endpoint.__signature__ = signature([param, MODEL_PARAM])  # type: ignore[attr-defined]
    return endpoint


def form_endpoint(op: Op) -> Callable[..., Awaitable[Response]]:
    """A multipart form: op.Request's bytes fields are file parts, the others plain fields."""
    files = [name for name, f in op.Request.model_fields.items() if f.annotation is bytes]

    async def endpoint(request: Request, model: str | None, **fields: Any) -> Response:
        for name in files:
            fields[name] = await fields[name].read()
        body = op.Request.model_validate(fields)
        # the runtime taken once the body is in
        return await respond(runtime_of(request.app.state.service, model), op, body, None)

    params: list[inspect.Parameter] = []
    for name, f in op.Request.model_fields.items():
        if name in files:
            annotation: Any = Annotated[UploadFile, File(description=f.description)]
        else:
            annotation = Annotated[f.annotation, *f.metadata, Form(description=f.description)]
        default = inspect.Parameter.empty if f.is_required() else f.default
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    endpoint.__signature__ = signature([*params, MODEL_PARAM])  # type: ignore[attr-defined]
    return endpoint


def signature(params: list[inspect.Parameter]) -> inspect.Signature:
    """An endpoint's signature as FastAPI reads it: request, then the body's parameters and the query's."""
    return inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request), *params]
    )
