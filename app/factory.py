"""create_app(settings): the FastAPI application, its lifespan (model loading, warm-up, draining) and its
OpenAPI document."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.access import Access, AccessMiddleware, Keys, RateLimiter, read_keys
from app.connections import RequestGuard
from app.engine import Engine, ThreadEngine, service_options
from app.error_handlers import install_error_handlers
from app.errors import PROBLEM_MEDIA_TYPE
from app.fastpath import GENERATE as GENERATE_PATH
from app.fastpath import FastPath
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, BodyLimits, MetricsMiddleware, RequestContextMiddleware
from app.routes import encode, generate, ops, page
from app.runtime import Runtime
from app.schemas import max_generate_body_bytes
from app.service import DigitService
from app.settings import Settings, get_settings, origins
from app.worker import ProcessEngine
from model.artifacts import load_model_dir

log = logging.getLogger(__name__)

DESCRIPTION = """\
A conditional VAE trained on MNIST, served over HTTP.

* **POST /generate** draws digits (a PNG grid, or JSON with `Accept: application/json`), reproducibly by seed.
* **POST /encode** turns a picture of a digit into its digit and latent posterior.
* **GET /livez**, **/readyz**, **/model**, **/metrics** for operations.
* **GET /** is a page to try the model in a browser.

Every error is `application/problem+json` (RFC 9457).
"""


def _version() -> str:
    try:
        return version("cvae-digits")
    except PackageNotFoundError:
        return "0+unknown"


def resolve_settings(app: FastAPI) -> Settings:
    """The settings: those given to create_app, else the get_settings dependency (honouring
    app.dependency_overrides, as tests may set it)."""
    given: Settings | None = app.state.given_settings
    if given is not None:
        return given
    return app.dependency_overrides.get(get_settings, get_settings)()


def access_of(settings: Settings) -> Access:
    """What access control the settings ask for (app/access.py)."""
    return Access(
        api_keys=Keys.of(read_keys(settings.api_keys.get_secret_value(), "CVAE_API_KEYS")),
        metrics_keys=Keys.of(read_keys(settings.metrics_api_keys.get_secret_value(), "CVAE_METRICS_API_KEYS")),
        limiter=RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None,
        cors_origins=origins(settings.cors_origins),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings = resolve_settings(app)
    state.settings = settings
    metrics: Metrics = state.metrics
    process = ProcessEngine.spawn(settings) if settings.inference_process else None  # loads while this process does
    try:
        model = load_model_dir(settings.model_dir)  # ModelDirError names the file; start-up fails
    except BaseException:
        if process is not None:
            await process.close()
        raise
    service = DigitService(model, service_options(settings))
    engine: Engine = process if process is not None else ThreadEngine(service)
    metrics.set_model(model)
    metrics.inference_process.watch(process)
    metrics.ready.set_function(lambda: float(ops.not_ready(state) is None))  # what /readyz answers, at each scrape
    threads_before = torch.get_num_threads()  # process-wide: put back at shutdown (tests run many apps)
    torch.set_num_threads(settings.torch_threads)
    runtime = Runtime(service, engine, settings, metrics)
    state.access = access_of(settings)
    state.body_limits = BodyLimits(
        default=settings.max_upload_bytes,
        by_path={GENERATE_PATH: min(settings.max_upload_bytes, max_generate_body_bytes(model.latent_dim))},
    )
    try:
        await runtime.start()
        state.runtime = runtime
        state.ready = True
        where = f"inference process {process.pid}" if process is not None else "inference thread"
        log.info("serving model %s (latent_dim %d) from %s (%s)", model.id, model.latent_dim, model.path, where)
        yield
    finally:
        state.ready = False
        await runtime.stop()
        torch.set_num_threads(threads_before)


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


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application. Cheap: settings are read and the model is loaded by the lifespan, at start-up.

    settings: use these instead of the environment's. Kept on app.state, not in app.dependency_overrides: while
    that dict is not empty, FastAPI rebuilds every route's sub-dependencies on every request.
    """
    app = ServiceApp(
        title="cvae-digits",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by app.routes.page from files shipped here (FastAPI's loads a CDN)
        redoc_url=None,
    )
    app.state.given_settings = settings
    app.state.settings = None  # until the lifespan resolves them
    app.state.runtime = None  # until the model is loaded and prepared
    app.state.ready = False
    app.state.body_limits = None  # until the lifespan knows the settings and the model
    app.state.draining = False  # set by python -m app when shutdown is asked for
    app.state.metrics = metrics = Metrics()
    app.state.access = None  # until the lifespan knows the settings: nothing to check
    install_error_handlers(app)
    # Added innermost first. Outermost: request IDs and nosniff on every response, metrics counting every answer,
    # the answers for connections cut short (app/connections.py), then access control and the body limit, which
    # answer before the body is read, and the fast path, which answers the plainest valid requests.
    app.add_middleware(FastPath)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AccessMiddleware)
    app.add_middleware(RequestGuard)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(generate.router)
    app.include_router(encode.router)
    app.include_router(ops.router)
    app.include_router(page.router)
    app.mount(page.StaticAssets.path, page.StaticAssets(), name="static")
    return app
