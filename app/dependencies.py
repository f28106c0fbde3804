"""FastAPI dependencies: what routes get from app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ServiceError
from app.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async: a plain def dependency would cost a thread-pool hop per request
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ServiceError(503, "the model is not loaded yet", kind="not-ready", headers={"Retry-After": "1"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
