"""Every error leaves as application/problem+json: each kind of exception is turned into a ServiceError and
rendered by problem_response()."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.core.errors import ServiceError, field_error, invalid, summary
from app.http.problems import PROBLEM_MEDIA_TYPE

log = logging.getLogger(__name__)


def problem_response(error: ServiceError) -> Response:
    return Response(error.body_bytes(), status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=error.headers)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return problem_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    error = ServiceError(exc.status_code, detail, kind=getattr(exc, "kind", None), headers=dict(exc.headers or {}))
    return problem_response(error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's validation errors (bodies are parsed and their media type checked before: app/api/parsing.py). Only
    loc, msg and type of each: `input` can echo a large or private body and `ctx` may hold exception objects."""
    assert isinstance(exc, RequestValidationError)
    errors = [field_error(list(e.get("loc", ())), e["msg"], e["type"]) for e in exc.errors()]
    return problem_response(invalid(summary(errors), errors))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(ServiceError(500, "an unexpected error occurred; it has been logged", kind="internal"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
