"""Every path the service answers, defined once: the routes, the fast path, access control and the metrics' route
labels all read them from here. Imports nothing of the app."""

from __future__ import annotations

GENERATE = "/generate"
ENCODE = "/encode"
LIVEZ = "/livez"
READYZ = "/readyz"
MODEL = "/model"
METRICS = "/metrics"
PAGE = "/"
DOCS = "/docs"
OPENAPI = "/openapi.json"
RELOAD = "/admin/reload"  # only with CVAE_ADMIN_API_KEYS set; else a 404 like any unknown path
STATIC = "/static"  # a mount: every file under it is labelled by this prefix

BATCHED = frozenset({GENERATE, ENCODE})  # the endpoints whose work goes through the engine
KEYED = frozenset({GENERATE, ENCODE, MODEL})  # the endpoints behind CVAE_API_KEYS
EXACT = frozenset({GENERATE, ENCODE, LIVEZ, READYZ, MODEL, METRICS, PAGE, DOCS, OPENAPI, RELOAD})
UNMATCHED = "unmatched"  # the route label of a path the service does not answer: never the raw path


def route_label(path: str) -> str:
    """The metrics' `route` label of a request path: the endpoint it was for, whoever answered it (a route, the fast
    path, or a refusal before either: 401, 408, 413, 415, 429, 503), else UNMATCHED."""
    if path in EXACT:
        return path
    if path.startswith(STATIC + "/"):
        return STATIC
    return UNMATCHED
