"""Every fixed path the service answers, defined once (an operation's is "/" + its name, app/operations/): the routes,
access control and the metrics' route labels read them from here. Imports nothing of the app."""

from __future__ import annotations

LIVEZ = "/livez"
READYZ = "/readyz"
MODEL = "/model"
METRICS = "/metrics"
PAGE = "/"
DOCS = "/docs"
OPENAPI = "/openapi.json"
RELOAD = "/admin/reload"  # only with CVAE_ADMIN_API_KEYS set; else a 404 like any unknown path
STATIC = "/static"  # a mount: every file under it is labelled by this prefix

KEYED = frozenset({MODEL})  # the endpoints behind CVAE_API_KEYS, besides every operation's
EXACT = frozenset({LIVEZ, READYZ, MODEL, METRICS, PAGE, DOCS, OPENAPI, RELOAD})
UNMATCHED = "unmatched"  # the route label of a path the service does not answer: never the raw path


def route_label(path: str, operations: frozenset[str] = frozenset()) -> str:
    """The metrics' `route` label of a request path: the endpoint it was for (a fixed one, or one of the operations'
    paths given), whoever answered it (a route, the fast path, or a refusal before either: 401, 408, 413, 415, 429,
    503), else UNMATCHED."""
    if path in EXACT or path in operations:
        return path
    if path.startswith(STATIC + "/"):
        return STATIC
    return UNMATCHED
