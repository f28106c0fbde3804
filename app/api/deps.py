"""How the HTTP side reaches the runtime: one function, for the FastAPI routes and the ASGI fast path alike, given the
ServiceState create_app made. A plain call, not a FastAPI dependency: dependency solving costs every request."""

from __future__ import annotations

from app.core.errors import unavailable
from app.serving.runtime import Runtime
from app.serving.state import ServiceState


def runtime_of(state: ServiceState) -> Runtime:
    """The runtime, or 503 before the model is loaded and prepared."""
    runtime = state.runtime
    if runtime is None:
        raise unavailable("the model is not loaded yet", kind="not-ready")
    return runtime
