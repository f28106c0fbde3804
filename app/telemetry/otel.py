"""Traces with OpenTelemetry, imported only when app/telemetry/tracing.py finds them asked for. Each request is a server
span (a child of its incoming W3C traceparent, when it has one); a request that reaches the engine adds its parsing,
its queue wait, the batch it rode in (linked to every other request in that batch), and within the batch the engine's
stages (inference, its PNG or its upload's image), recorded from the times the engine sent back with the answers.
Why the inference process sends times rather than spans: docs/operating.md, "Traces"."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from time import time_ns
from typing import Generic, TypeVar

from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, get_current_span, set_span_in_context
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.stages import BatchTrace
from app.paths import route_label

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")
SCOPE = "cvae-digits"  # the instrumentation scope of every span here
TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


@dataclass(slots=True)
class Traced(Generic[J]):
    """A job queued with its request's span and the time it was queued (time.time_ns())."""

    job: J
    request: Span
    queued_ns: int


class Tracing:
    """The tracer, the middleware that starts every request's span, and the batch recorder around an engine."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE)

    def install(self, app: Starlette, operations: frozenset[str] = frozenset()) -> None:
        """Trace every request to app, outermost (added last); operations: their paths, labelled as themselves."""
        app.add_middleware(TraceRequests, tracing=self, operations=operations)

    def job(self, job: J) -> Traced[J]:
        """A job about to be queued by the current request: its "parse" span (the request's start until now: the head
        and body read, parsed, validated and checked against the model card) ends here."""
        now = time_ns()
        request = get_current_span()
        start = getattr(request, "start_time", None)  # an SDK span's; a request not sampled has none
        if request.is_recording() and start is not None:
            self.tracer.start_span("parse", context=set_span_in_context(request), start_time=start).end(now)
        return Traced(job, request, now)

    def batches(
        self, lane: str, run: Callable[[list[J], BatchTrace | None], Awaitable[list[R]]], model: str = ""
    ) -> Callable[[list[Traced[J]]], Awaitable[list[R]]]:
        """The lane's batch function for traced jobs: run(jobs, trace), and each job's queue, batch and stage spans;
        model: the served model whose lane it is (its batches' cvae.model, beside cvae.lane and their numbers)."""
        numbers = itertools.count(1)

        async def traced(jobs: list[Traced[J]]) -> list[R]:
            started = time_ns()
            number = next(numbers)
            requests = [j.request.get_span_context() for j in jobs]
            batches: list[Span] = []
            for i, j in enumerate(jobs):
                parent = set_span_in_context(j.request)
                self.tracer.start_span("queue", context=parent, start_time=j.queued_ns).end(started)
                attributes: dict[str, str | int] = {"cvae.lane": lane, "cvae.batch.number": number,
                                                    "cvae.batch.size": len(jobs), "cvae.batch.position": i}  # fmt: skip
                if model:
                    attributes["cvae.model"] = model
                links = [Link(c) for k, c in enumerate(requests) if k != i and c.is_valid]
                span = self.tracer.start_span("batch", parent, links=links, start_time=started, attributes=attributes)
                batches.append(span)
            contexts = [s.get_span_context() for s in batches]
            # A batch of requests all sampled out is sent untimed: nothing would record its stages.
            recorded = any(s.is_recording() for s in batches)
            traceparents = [f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}" for c in contexts]
            trace = BatchTrace(traceparents) if recorded else None
            try:
                results = await run([j.job for j in jobs], trace)
            except BaseException as e:
                for span in batches:
                    span.record_exception(e)
                    span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
                    span.end()
                raise
            for stage in trace.stages if trace is not None else ():  # a whole batch's stage: in every job's batch
                for i in range(len(batches)) if stage.item is None else (stage.item,):
                    parent = set_span_in_context(batches[i])
                    self.tracer.start_span(stage.name, context=parent, start_time=stage.start_ns).end(stage.end_ns)
            ended = time_ns()
            for span in batches:
                span.end(ended)
            return results

        return traced


class TraceRequests:
    """ASGI middleware: every HTTP request one server span, named by its method and route label (app/paths.py), the
    current span while the request is answered."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing, operations: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.tracer = tracing.tracer
        self.operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {TRACE_HEADERS[n]: v.decode("latin-1") for n, v in scope["headers"] if n in TRACE_HEADERS}
        method, path = scope["method"], scope["path"]
        label = route_label(path, self.operations)
        attributes = {"http.request.method": method, "http.route": label, "url.path": path}
        with self.tracer.start_as_current_span(
            f"{method} {label}", context=extract(carrier) if carrier else None, kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:  # fmt: skip

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_traced)


def provider_from(environ: Mapping[str, str]) -> TracerProvider:
    """A tracer provider as the OTEL_* environment configures it: resource (OTEL_SERVICE_NAME, default cvae-digits;
    OTEL_RESOURCE_ATTRIBUTES), sampler (OTEL_TRACES_SAMPLER), exporters (OTEL_TRACES_EXPORTER: otlp, the SDK's
    default, over HTTP/protobuf, configured by OTEL_EXPORTER_OTLP_*; console), each behind a batch processor
    (OTEL_BSP_*)."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SCOPE}))
    provider = TracerProvider(resource=resource)
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for name in (n.strip() for n in names.split(",") if n.strip()):
        exporter = exporter_named(name, environ)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def exporter_named(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol not in (None, "", "http/protobuf"):
            log.warning("OTLP over %s is not shipped (the otel extra has HTTP/protobuf); sending over that", protocol)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp, but the OTLP exporter is not installed (pip install '.[otel]')")
            return None
        return OTLPSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER names %r, which this service does not ship (console, otlp); ignored", name)
    return None
