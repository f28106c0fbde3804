"""POST /generate: digits drawn by the model, as a PNG grid (or JSON with the PNG inside)."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response

from app import paths
from app.api.deps import runtime_of
from app.api.parsing import StrictRoute
from app.api.schemas import GENERATE_EXAMPLES, GenerateJSON, GenerateRequest, Problem, ValidationProblem
from app.http.problems import ServiceError
from app.serving.runtime import Runtime
from app.telemetry.logs import MODEL_ID

router = APIRouter(tags=["generate"], route_class=StrictRoute)

PNG = "image/png"
JSON = "application/json"

GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A greyscale PNG grid, white digits on black like MNIST; with `Accept: application/json`, "
        "the PNG as base64 plus the latents and labels of its tiles.",
        "model": GenerateJSON,  # the application/json body
        "content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "X-Seed": {
                "description": "the seed used (absent when the request gave latent): send it back to get the same PNG",
                "schema": {"type": "integer"},
            },
            "X-Model-Id": {"description": "the model that drew it", "schema": {"type": "string"}},
        },
    },
    400: {"model": Problem, "description": "The body is not valid JSON"},
    406: {"model": Problem, "description": "Accept allows neither image/png nor application/json"},
    413: {"model": Problem, "description": "The body is larger than CVAE_MAX_UPLOAD_BYTES"},
    415: {"model": Problem, "description": "The body is not sent as application/json"},
    422: {"model": ValidationProblem, "description": "A field is missing, malformed or out of range"},
    503: {"model": Problem, "description": "Overloaded, starting or shutting down: retry"},
}


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


@router.post(
    paths.GENERATE,
    summary="Draw digits",
    description="Samples `n` latents (for one digit, from that digit's prior; for several, from the prior every digit "
    "shares, each latent decoded under every digit) or decodes the latent given, and lays the images out in a grid, "
    "digit-major then sample, row-major in `columns` columns: with the default columns = n, one row per digit and "
    "one latent point, one hand, down each column. The same seed, request and model always give a byte-identical "
    "PNG; the seed used comes back in `X-Seed`.",
    response_class=Response,
    responses=GENERATE_RESPONSES,
)
async def generate(
    body: Annotated[GenerateRequest, Body(openapi_examples=GENERATE_EXAMPLES)], request: Request
) -> Response:
    return await respond(runtime_of(request.app), body, request.headers.get("accept"))


async def respond(runtime: Runtime, body: GenerateRequest, accept: str | None) -> Response:
    """The answer to a validated /generate request: the route's, and the fast path's (app/api/fastpath.py)."""
    as_json = wants_json(accept)
    spec = runtime.card.make_spec(
        digits=body.digits,
        n=body.n,
        latent=body.latent,
        seed=body.seed,
        temperature=body.temperature,
        columns=body.columns,
        padding=body.padding,
        scale=body.scale,
        with_latents=as_json,
    )
    drawing = await runtime.generate(spec)
    MODEL_ID.set(runtime.card.id)
    headers = {"X-Model-Id": runtime.card.id}
    if spec.seed is not None:
        headers["X-Seed"] = str(spec.seed)
    if not as_json:
        return Response(drawing.png, media_type=PNG, headers=headers)
    assert drawing.labels is not None and drawing.latents is not None  # asked for by with_latents
    payload = GenerateJSON(
        model_id=runtime.card.id,
        seed=spec.seed,
        width=spec.width,
        height=spec.height,
        columns=spec.columns,
        digits=list(spec.digits),
        labels=drawing.labels,
        latents=drawing.latents,
        png_base64=base64.b64encode(drawing.png).decode("ascii"),
    )
    return JSONResponse(payload.model_dump(), headers=headers)
