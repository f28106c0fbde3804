"""FastAPI dependencies: what routes get from app.state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.errors import ServiceError
from app.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    """The runtime, or 503 before the model is loaded. Called directly by the hot routes (/generate, /encode):
    as a dependency it costs FastAPI's dependency resolution on every request, a tenth of the route's time."""
    return runtime_in(request.app)


def runtime_in(app: Any) -> Runtime:
    """runtime_of for an ASGI app (scope["app"])."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is None:
        raise ServiceError(503, "the model is not loaded yet", kind="not-ready", headers={"Retry-After": "1"})
    return runtime


async def get_runtime(request: Request) -> Runtime:
    # async: a plain def dependency would cost a thread-pool hop per request
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
