"""How the HTTP side reaches a served model's runtime: one function, for the FastAPI routes and the ASGI fast path
alike, given the ServiceState create_app made, and the one reading of ?model= from a raw query string. A plain call,
not a FastAPI dependency: dependency solving costs every request."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from app.core.errors import unavailable, unknown_model
from app.serving.runtime import Runtime
from app.serving.state import ServiceState

PLAIN_MODEL_QUERY = re.compile(rb"model=([a-z0-9][a-z0-9_.-]{0,62})")  # a served name needs no percent-encoding


def runtime_of(state: ServiceState, model: str | None = None) -> Runtime:
    """The runtime of the model named (None: the default); 404 for a name the service does not serve, 503 before the
    model is loaded and prepared."""
    served = state.models.get(state.default if model is None else model)
    if served is None:
        served_names = ", ".join(state.models)
        raise unknown_model(f"no model named {model!r:.80}; the models served are {served_names} (GET /models)")
    runtime = served.runtime
    if runtime is None:
        raise unavailable("the model is not loaded yet", kind="not-ready")
    return runtime


def model_in_query(query: bytes) -> str | None:
    """The model a raw query string names (model=NAME; the last one when repeated, as the routes read it), else None."""
    if not query:
        return None
    plain = PLAIN_MODEL_QUERY.fullmatch(query)
    if plain is not None:
        return plain.group(1).decode()
    values = [value for key, value in parse_qsl(query.decode("latin-1")) if key == "model"]
    return values[-1] if values else None
