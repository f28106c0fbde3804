"""Prometheus metrics, on a registry per app (so several apps, e.g. in tests, never share counters), and the
middleware that counts every request under the endpoint it was for (app/paths.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.middleware import ResponseStatus
from app.paths import route_label
from app.telemetry.process import InferenceProcessCollector
from model.manifest import ModelCard

# Seconds: most requests here take a millisecond or a few; the tail reaches seconds only under overload.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RELOAD_OUTCOMES = ("reloaded", "refused")
CLIENT_CLOSED = 499  # status counted for a request whose client went away before its answer (nginx's code)


class Metrics:
    """All of the service's metrics; `registry` is what /metrics exposes. A series about one served model carries its
    name as the `model` label: names come from the configuration, never from a request, so they stay few."""

    def __init__(
        self,
        operations: Iterable[str] = (),
        drawing: Iterable[str] = (),
        models: Iterable[str] = (),
        namespace: str = "cvae",
    ) -> None:
        """operations: the names of the batched operations (app/operations/registry.py); drawing: those whose batch
        cost is tiles drawn; models: the served models' names."""
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.inference_process = InferenceProcessCollector(namespace, r)  # watches the engines the lifespan starts
        self.requests = Counter(
            "http_requests", "HTTP requests answered, by route template and status",
            ["method", "route", "status"], namespace=namespace, registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "http_request_duration_seconds", "Time from request to the end of the response, by route template",
            ["method", "route"], namespace=namespace, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being handled now", namespace=namespace, registry=r
        )
        self.images = Counter(
            "images_generated",
            "Images (tiles) generated, by model and class number (a label named digit, as dashboards know it)",
            ["model", "digit"],
            namespace=namespace,
            registry=r,
        )
        self.inference_duration = Histogram(
            "inference_duration_seconds", "Time a batch takes in the engine, by model and operation",
            ["model", "operation"], namespace=namespace, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_samples = Histogram(
            "batch_size_samples", "Tiles decoded per batch of a drawing operation, by model", ["model"],
            namespace=namespace, registry=r, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "batch_size_requests", "Requests served per batch, by model and operation", ["model", "operation"],
            namespace=namespace, registry=r, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "batch_queue_wait_seconds", "Time a request waits before its batch starts, by model and operation",
            ["model", "operation"], namespace=namespace, registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_events = Counter(
            "queue_events", "Requests refused by the queue (reason: overloaded, queue_bytes, deadline) or dropped from "
            "it because their client went away (abandoned), by model and operation", ["model", "operation", "reason"],
            namespace=namespace, registry=r,
        )  # fmt: skip
        self.model_info = Info("model", "The model being served, one series per served model", ["model"],
                               namespace=namespace, registry=r)  # fmt: skip
        self.reloads = Counter(
            "reloads", "Model reloads (SIGHUP, POST /admin/reload) by model and outcome: reloaded, or refused (the old "
            "model kept serving; the log says why)", ["model", "outcome"], namespace=namespace, registry=r,
        )  # fmt: skip
        self.answers = Counter(
            "model_answers", "Requests answered by each served model's model id (its current one and the one before "
            "it only), by operation", ["model", "model_id", "operation"], namespace=namespace, registry=r,
        )  # fmt: skip
        self._answers_by: dict[tuple[str, str, str], Counter] = {}  # (model, model_id, operation)
        self._model_ids: dict[str, list[str]] = {}  # by model: the ids whose answers are counted, previous and current
        self.ready = Gauge("ready", "1 when /readyz answers 200, else 0", namespace=namespace, registry=r)
        # Children looked up once, not per request.
        self._images_by: dict[tuple[str, int], Counter] = {}  # (model, label)
        self._operations = tuple(operations)
        self._by_operation: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}  # (model, operation)
        self._samples: dict[str, Histogram] = {}
        self._by_request: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}  # (method, route, status)
        self.drawing = frozenset(drawing)
        for model in models:
            self._add_model(model)

    def _add_model(self, model: str) -> None:
        """A served model's series, each at zero until it counts (a name from the configuration)."""
        for op in self._operations:
            self._by_operation[(model, op)] = (
                self.inference_duration.labels(model, op),
                self.batch_requests.labels(model, op),
                self.queue_wait.labels(model, op),
            )
        if self.drawing:
            self._samples[model] = self.batch_samples.labels(model)
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(model, outcome)

    def set_model(self, model: str, card: ModelCard) -> None:
        """The model id now serving as `model`; the answers of its ids before the previous one are no longer exposed."""
        ids = self._model_ids.setdefault(model, [])
        if card.id not in ids:
            ids[:] = [*ids[-1:], card.id]
        for key in [key for key in self._answers_by if key[0] == model and key[1] not in ids]:
            del self._answers_by[key]
            self.answers.remove(*key)
        self.model_info.labels(model).info(
            {
                "model_id": card.id,
                "latent_dim": str(card.latent_dim),
                "prior": card.prior_kind,
                "torch_version": str(card.manifest.get("torch_version", "")),
                "reading": card.reading,
            }
        )

    def count_answer(self, model: str, model_id: str, operation: str) -> None:
        child = self._answers_by.get((model, model_id, operation))
        if child is None:
            if model_id not in self._model_ids.get(model, ()):  # replaced twice while its request ran: not counted
                return
            child = self._answers_by[(model, model_id, operation)] = self.answers.labels(model, model_id, operation)
        child.inc()

    def count_images(self, model: str, labels: Sequence[int]) -> None:
        """One per image drawn, by its label."""
        counts: dict[int, int] = {}
        for d in labels:
            counts[d] = counts.get(d, 0) + 1
        for d, n in counts.items():
            child = self._images_by.get((model, d))
            if child is None:
                child = self._images_by[(model, d)] = self.images.labels(model, str(d))
            child.inc(n)

    def on_batch(
        self, model: str, operation: str, requests: int, cost: int, queue_waits: Sequence[float], seconds: float
    ) -> None:
        """Once per batch (the batchers' observer); cost: the batch's tiles, for a drawing operation."""
        duration, batch_requests, queue_wait = self._by_operation[(model, operation)]
        duration.observe(seconds)
        batch_requests.observe(requests)
        if operation in self.drawing:
            self._samples[model].observe(cost)
        for wait in queue_waits:
            queue_wait.observe(wait)

    def on_queue(self, model: str, operation: str, reason: str) -> None:
        """The scheduler's queue observer: a request refused or dropped."""
        self.queue_events.labels(model, operation, reason).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "other"
        children = self._by_request.get((method, route, status))
        if children is None:  # first of its kind (few: routes are templates, never raw paths)
            children = self.requests.labels(method, route, str(status)), self.request_duration.labels(method, route)
            self._by_request[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    """Counts and times every request, by method, route label (app/paths.py's route_label) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, operations: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.operations = operations  # the operations' paths, labelled as themselves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response = ResponseStatus(send)
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, response)
        except BaseException:
            response.status = response.status or 500  # uvicorn answers 500 when the app raises before it answers
            raise
        finally:
            status = response.status or CLIENT_CLOSED  # ended unanswered: its client had gone (app/http/connections.py)
            self.metrics.in_flight.dec()
            route = route_label(scope["path"], self.operations)
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)
