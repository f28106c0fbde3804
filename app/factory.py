"""create_app(settings): the FastAPI application, its lifespan (the model card, the engine's start and stop) and its
OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import paths
from app.api.deps import model_in_query
from app.api.fastpath import FastPath, route_answers
from app.api.routes import operations, ops, page
from app.engine.interface import Engine, InferenceOptions
from app.engine.process import ProcessEngine
from app.http.access import Access, AccessMiddleware, Keys, RateLimiter
from app.http.connections import RequestGuard
from app.http.handlers import install_error_handlers
from app.http.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.http.problems import PROBLEM_MEDIA_TYPE
from app.inference.thread import ThreadEngine
from app.oip import models as oip_models
from app.oip import routes as oip_routes
from app.oip.errors import ProtocolErrors
from app.oip.fastpath import InferFastPath
from app.operations.registry import OPERATIONS
from app.serving.reload import Reloader, Reloaders
from app.serving.runtime import Runtime
from app.serving.state import ServiceState
from app.settings import Settings, origins, read_keys
from app.telemetry.metrics import Metrics, MetricsMiddleware
from app.telemetry.tracing import from_environment
from model.manifest import ModelCard, read_card

if TYPE_CHECKING:
    from app.telemetry.otel import Tracing

log = logging.getLogger(__name__)

OPERATION_PATHS = frozenset(op.path for op in OPERATIONS)

DESCRIPTION = """\
A conditional VAE trained on MNIST, served over HTTP.

{operations}* **GET /livez**, **/readyz**, **/model**, **/models**, **/metrics** for operations.
* **GET /** is a page to try the model in a browser.

Every error is `application/problem+json` (RFC 9457).
"""


def _version() -> str:
    try:
        return version("cvae-digits")
    except PackageNotFoundError:
        return "0+unknown"


def access_of(settings: Settings) -> Access:
    """What access control the settings ask for (app/http/access.py), on the paths it applies to."""
    return Access(
        api_keys=Keys.of(read_keys(settings.api_keys.get_secret_value(), "CVAE_API_KEYS")),
        metrics_keys=Keys.of(read_keys(settings.metrics_api_keys.get_secret_value(), "CVAE_METRICS_API_KEYS")),
        admin_keys=Keys.of(read_keys(settings.admin_api_keys.get_secret_value(), "CVAE_ADMIN_API_KEYS")),
        limiter=RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None,
        cors_origins=origins(settings.cors_origins),
        keyed=paths.Paths(
            paths.KEYED | OPERATION_PATHS | {paths.V2_INDEX},
            frozenset({paths.V2_MODEL, paths.V2_MODEL_READY, paths.V2_INFER}),
        ),
        metrics=paths.METRICS,
        admin=paths.Paths(frozenset({paths.RELOAD}), frozenset({paths.V2_LOAD, paths.V2_UNLOAD})),
        limited=paths.Paths(OPERATION_PATHS, frozenset({paths.V2_INFER})),
    )


def engine_of(settings: Settings, model_dir: Path | None = None) -> Engine:
    """The engine the settings ask for, for model_dir (None: CVAE_MODEL_DIR); a process engine's child starts loading
    the model at once."""
    model_dir = settings.model_dir if model_dir is None else model_dir
    options = InferenceOptions(
        decode_chunk=settings.decode_chunk,
        max_pass_rows=settings.max_pass_rows,
        max_encode_batch=settings.max_encode_batch,
        png_compress_level=settings.png_compress_level,
        max_image_pixels=settings.max_image_pixels,
        model_format=settings.model_format,
    )
    if not settings.inference_process:
        return ThreadEngine(model_dir, options, settings.torch_threads)
    engine = ProcessEngine(
        model_dir=model_dir,
        options=options,
        torch_threads=settings.torch_threads,
        log_format=settings.log_format,
    )
    engine.start()
    return engine


def body_limit_of(settings: Settings, state: ServiceState) -> Callable[[str, bytes], int]:
    """The largest request body for a path and query: the limit of the model asked for (?model=, else the default) for
    an operation's path, else CVAE_MAX_UPLOAD_BYTES; a protocol model's infer path, its operation's for its model. (A
    reload keeps a model's shapes, so its limits too.)"""
    default = settings.max_upload_bytes
    names = frozenset(state.models)

    def limit_of(path: str, query: bytes) -> int:
        if path.startswith(paths.V2 + "/"):
            found = oip_models.infer_model(path, names)
            if found is None or (runtime := state.models[found[0]].runtime) is None:
                return default
            return oip_models.body_limit(runtime.card, found[1], default)
        served = state.models.get(model_in_query(query) or state.default)
        runtime = None if served is None else served.runtime
        return default if runtime is None else runtime.body_limits.get(path, default)

    return limit_of


@asynccontextmanager
async def lifespan(
    app: FastAPI, *, settings: Settings, state: ServiceState, metrics: Metrics, tracing: Tracing | None
) -> AsyncIterator[None]:
    """Every model's card read first (ModelDirError names the file; start-up fails), then their engines started and
    prepared side by side; any that cannot be closes them all. At shutdown every model's queued requests are answered
    before its engine closes."""
    cards = {name: read_card(served.directory.resolve()) for name, served in state.models.items()}
    metrics.ready.set_function(lambda: float(ops.not_ready(state) is None))  # what /readyz answers, at each scrape
    runtimes: dict[str, Runtime] = {}
    reloaders = None
    try:
        for name, card in cards.items():
            metrics.set_model(name, card)
            engine = engine_of(settings, card.path)  # the last step that can fail before its engine is closed below
            metrics.inference_process.watch(name, engine if isinstance(engine, ProcessEngine) else None)
            runtimes[name] = Runtime(name=name, card=card, engine=engine, settings=settings, metrics=metrics,
                                     tracing=tracing)  # fmt: skip
        started = await asyncio.gather(*(runtime.start() for runtime in runtimes.values()), return_exceptions=True)
        for failure in started:  # every start has ended, so that none is still preparing when its engine is closed
            if isinstance(failure, BaseException):
                raise failure
        for name, runtime in runtimes.items():
            state.models[name].runtime = runtime
        state.reloaders = reloaders = Reloaders({
            name: Reloader(
                served=served, read=partial(read_card_of, served.directory),
                build=partial(new_runtime, settings, metrics, tracing, name), metrics=metrics,
                timeout_s=settings.reload_timeout_s,
            )
            for name, served in state.models.items()
        })  # fmt: skip
        state.ready = True
        for name, runtime in runtimes.items():
            engine = runtime.engine
            where = f"inference process {engine.pid}" if isinstance(engine, ProcessEngine) else "inference thread"
            log.info("serving %s: model %s (latent_dim %d) from %s (%s)", name, runtime.card.id,
                     runtime.card.latent_dim, runtime.card.path, where)  # fmt: skip
            warn_reading(runtime.card)
        yield
    finally:
        state.ready = False
        if reloaders is not None:
            await reloaders.close()
        serving = [state.models[name].runtime or runtime for name, runtime in runtimes.items()]
        stopped = await asyncio.gather(*(runtime.stop() for runtime in serving), return_exceptions=True)
        for failure in stopped:  # every model drained and closed, side by side, before any failure is raised
            if isinstance(failure, BaseException):
                raise failure


def read_card_of(directory: Path) -> ModelCard:
    """A served model's card, its directory read again with its symlinks followed once (resolve()), so that the card
    and the engine read the same directory."""
    return read_card(directory.resolve())


def warn_reading(card: ModelCard) -> None:
    """A model directory without a reader still serves; say so, since /encode then reads digits less accurately."""
    if card.reading != "reader":
        log.warning(
            "model %s has no reader (reader.pt): /encode reads digits by the generative rule, less accurate on digits "
            "unlike the training data (docs/quality.md); /model and /encode say so as \"reading\": \"%s\"",
            card.id, card.reading,
        )  # fmt: skip


def new_runtime(settings: Settings, metrics: Metrics, tracing: Tracing | None, name: str, card: ModelCard) -> Runtime:
    """A runtime for the served model `name` from the model directory of `card`, its engine started: a reload's new
    model."""
    return Runtime(name=name, card=card, engine=engine_of(settings, card.path), settings=settings, metrics=metrics,
                   tracing=tracing)  # fmt: skip


class ServiceApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, with every error response as application/problem+json (what the handlers send),
        and FastAPI's validation error schema, which the service never sends, replaced by ValidationProblem."""
        if not self.openapi_schema:
            self.openapi_schema = problem_errors(
                get_openapi(title=self.title, version=self.version, description=self.description, routes=self.routes)
            )
        return self.openapi_schema


def problem_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document with every error response's application/json body moved to application/problem+json."""
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                if not status.isdigit() or int(status) < 400:
                    continue
                content = response.get("content", {})
                body = content.pop("application/json", None)
                if body is not None:
                    ref = body.get("schema", {}).get("$ref", "")
                    if ref.endswith("/HTTPValidationError"):
                        body = {"schema": {"$ref": "#/components/schemas/ValidationProblem"}}
                    content[PROBLEM_MEDIA_TYPE] = body
    schemas = doc.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return doc


def create_app(settings: Settings | None = None, tracing: Tracing | None = None) -> FastAPI:
    """The application, for the settings (None: read from the environment now; pydantic's ValidationError names a bad
    CVAE_* variable). Cheap: the model is read, and the engine started, by the lifespan. Each middleware is given its
    configuration here; what a reload changes (the runtime) it reads from the one ServiceState, which the routes
    reach as app.state.service. Kept on app.state, not in app.dependency_overrides: while that dict is not empty,
    FastAPI rebuilds every route's sub-dependencies on every request. Traced by tracing, or (None) as the OTEL_*
    environment asks (app/telemetry/tracing.py): by default not at all."""
    settings = Settings() if settings is None else settings
    state = ServiceState(settings.served_models())
    metrics = Metrics(
        operations=[op.name for op in OPERATIONS], drawing=[op.name for op in OPERATIONS if op.draws],
        models=list(state.models),
    )  # fmt: skip
    tracing = tracing or from_environment()
    app = ServiceApp(
        title="cvae-digits",
        version=_version(),
        description=DESCRIPTION.format(
            operations="".join(f"* **POST {op.path}**: {op.summary}.\n" for op in OPERATIONS)
        ),
        lifespan=partial(lifespan, settings=settings, state=state, metrics=metrics, tracing=tracing),
        openapi_url=paths.OPENAPI,
        docs_url=None,  # served by app.api.routes.page from files shipped here (FastAPI's loads a CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = state
    app.state.metrics = metrics
    app.state.tracing = tracing
    install_error_handlers(app)
    # Added innermost first. Outermost: request IDs and nosniff on every response, metrics counting every answer,
    # the answers for connections cut short (app/http/connections.py), then access control and the body limit, which
    # answer before the body is read, and the fast paths: the plainest valid REST requests, every /v2 infer request.
    generate, encode = route_answers(state)
    app.add_middleware(FastPath, generate=generate, encode=encode)
    app.add_middleware(InferFastPath)
    app.add_middleware(BodyLimitMiddleware, limit_of=body_limit_of(settings, state))
    app.add_middleware(AccessMiddleware, access=access_of(settings))
    app.add_middleware(RequestGuard)
    app.add_middleware(ProtocolErrors)  # under /v2, every refusal above as the protocol's {"error": ...}
    app.add_middleware(MetricsMiddleware, metrics=metrics, operations=OPERATION_PATHS)
    app.add_middleware(RequestContextMiddleware)
    if tracing is not None:
        tracing.install(app, OPERATION_PATHS)  # outermost: a request's span holds all of its answer
    app.include_router(operations.router(OPERATIONS))
    app.include_router(ops.router)
    app.include_router(oip_routes.router(_version()))
    app.include_router(page.router)
    app.mount(paths.STATIC, page.StaticAssets(), name="static")
    return app
