"""Every fixed path the service answers, defined once (an operation's is "/" + its name, app/operations/), and the
Open Inference Protocol's paths (app/oip/) as templates: the routes, access control and the metrics' route labels
read them from here. Imports nothing of the app."""

from __future__ import annotations

from dataclasses import dataclass

LIVEZ = "/livez"
READYZ = "/readyz"
MODEL = "/model"
MODELS = "/models"
METRICS = "/metrics"
PAGE = "/"
DOCS = "/docs"
OPENAPI = "/openapi.json"
RELOAD = "/admin/reload"  # only with CVAE_ADMIN_API_KEYS set; else a 404 like any unknown path
STATIC = "/static"  # a mount: every file under it is labelled by this prefix

# The Open Inference Protocol (app/oip/). A model's paths hold its name, and may hold its version after it
# (/v2/models/{model}/versions/{version}...): each is labelled by its template, whatever the name and version.
V2 = "/v2"
V2_LIVE = "/v2/health/live"
V2_READY = "/v2/health/ready"
V2_INDEX = "/v2/repository/index"
V2_MODEL = "/v2/models/{model}"
V2_MODEL_READY = "/v2/models/{model}/ready"
V2_INFER = "/v2/models/{model}/infer"
V2_LOAD = "/v2/repository/models/{model}/load"
V2_UNLOAD = "/v2/repository/models/{model}/unload"
V2_EXACT = frozenset({V2, V2_LIVE, V2_READY, V2_INDEX})

KEYED = frozenset({MODEL, MODELS})  # the endpoints behind CVAE_API_KEYS, besides every operation's
EXACT = frozenset({LIVEZ, READYZ, MODEL, MODELS, METRICS, PAGE, DOCS, OPENAPI, RELOAD})
UNMATCHED = "unmatched"  # the route label of a path the service does not answer: never the raw path


def route_label(path: str, operations: frozenset[str] = frozenset()) -> str:
    """The metrics' `route` label of a request path: the endpoint it was for (a fixed one, or one of the operations'
    paths given), whoever answered it (a route, the fast path, or a refusal before either: 401, 408, 413, 415, 429,
    503), else UNMATCHED."""
    if path in EXACT or path in operations or path in V2_EXACT:
        return path
    if path.startswith(STATIC + "/"):
        return STATIC
    if path.startswith(V2 + "/"):
        return v2_template(path)
    return UNMATCHED


def v2_template(path: str) -> str:
    """The template of an Open Inference Protocol path with a model in it (its version folded in), else UNMATCHED."""
    parts = path.split("/")  # "", "v2", "models" | "repository", ...
    if len(parts) >= 4 and parts[2] == "models" and parts[3]:
        rest = parts[4:]
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            rest = rest[2:]
        if not rest:
            return V2_MODEL
        if rest == ["ready"]:
            return V2_MODEL_READY
        if rest == ["infer"]:
            return V2_INFER
    if len(parts) == 6 and parts[2:4] == ["repository", "models"] and parts[4]:
        if parts[5] == "load":
            return V2_LOAD
        if parts[5] == "unload":
            return V2_UNLOAD
    return UNMATCHED


@dataclass(frozen=True)
class Paths:
    """Paths that an access rule applies to: these exact ones, and every path whose route label is one of these
    templates."""

    exact: frozenset[str] = frozenset()
    templates: frozenset[str] = frozenset()

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self.exact or (
            bool(self.templates) and path.startswith(V2 + "/") and v2_template(path) in self.templates
        ))  # fmt: skip
