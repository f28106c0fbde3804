"""How the HTTP side reaches the runtime: one function, for the FastAPI routes (request.app) and the ASGI fast
path (scope["app"]) alike. A plain call, not a FastAPI dependency: dependency solving costs every request."""

from __future__ import annotations

from starlette.applications import Starlette

from app.core.errors import unavailable
from app.serving.runtime import Runtime


def runtime_of(app: Starlette) -> Runtime:
    """The runtime, or 503 before the model is loaded and prepared."""
    runtime: Runtime | None = app.state.runtime
    if runtime is None:
        raise unavailable("the model is not loaded yet", kind="not-ready")
    return runtime
