"""Traces (app/telemetry/tracing.py, otel.py): off unless OTEL_* asks, and then nothing of OpenTelemetry's SDK loaded;
on, a request through the real app and inference process is one trace (parse, queue, batch, the engine's stages),
continuing an incoming traceparent, and the requests that shared a batch are linked to one another."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.factory import create_app
from app.settings import Settings
from app.telemetry.otel import Tracing
from app.telemetry.tracing import asked, from_environment
from tests.conftest import drawing, encoded, upload, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def traced(tiny_model_dir: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """The service traced into memory, its engine the inference process; requests wait up to 300 ms to share a batch."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(model_dir=tiny_model_dir, inference_process=True, max_wait_ms=300)
    with TestClient(create_app(settings, tracing=Tracing(provider))) as c:
        yield c, exporter


def trace_of(exporter: InMemorySpanExporter, server: ReadableSpan) -> dict[str, list[ReadableSpan]]:
    """The spans of server's trace, by name."""
    assert server.context is not None
    spans: dict[str, list[ReadableSpan]] = {}
    for s in exporter.get_finished_spans():
        if s.context is not None and s.context.trace_id == server.context.trace_id:
            spans.setdefault(s.name, []).append(s)
    return spans


def children(spans: dict[str, list[ReadableSpan]], parent: ReadableSpan) -> set[str]:
    assert parent.context is not None
    return {
        n for n, ss in spans.items() for s in ss if s.parent is not None and s.parent.span_id == parent.context.span_id
    }


def servers(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER and s.name == name]


def test_a_generate_request_is_one_trace_across_the_process_continuing_its_traceparent(traced):
    c, exporter = traced
    exporter.clear()
    r = c.post(
        "/generate", json={"digit": 3, "n": 2, "seed": 1}, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    )
    assert r.status_code == 200
    wait_for(lambda: len(servers(exporter, "POST /generate")) == 1, 5)
    (server,) = servers(exporter, "POST /generate")
    assert server.context is not None and f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    spans = trace_of(exporter, server)
    assert children(spans, server) == {"parse", "queue", "batch"}
    (parse,), (queue,), (batch,) = spans["parse"], spans["queue"], spans["batch"]
    assert children(spans, batch) == {"inference", "png"}
    (inference,), (png,) = spans["inference"], spans["png"]
    # The times line up: parsing from the request's start, the queue until the batch, the child's stages (timed by
    # the inference process's clock, the same wall clock) within the batch, in order.
    assert parse.start_time == server.start_time and parse.end_time == queue.start_time
    assert queue.end_time == batch.start_time
    assert batch.start_time <= inference.start_time <= inference.end_time <= png.start_time <= png.end_time
    assert png.end_time <= batch.end_time <= server.end_time
    assert batch.attributes is not None and batch.attributes["cvae.batch.size"] == 1 and not batch.links
    assert batch.attributes["cvae.model"] == "digits"  # the served model whose lane ran it


def test_requests_that_shared_a_batch_are_linked_to_one_another(traced):
    c, exporter = traced
    exporter.clear()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda d: c.post("/generate", json={"digit": d, "seed": d}), range(4)))
    assert [r.status_code for r in answers] == [200] * 4
    wait_for(lambda: len(servers(exporter, "POST /generate")) == 4, 5)
    batches = [s for s in exporter.get_finished_spans() if s.name == "batch"]
    assert len(batches) == 4 and len({s.context.trace_id for s in batches if s.context}) == 4  # one in each trace
    shared = [s for s in batches if s.attributes and s.attributes["cvae.batch.size"] > 1]
    assert shared, "the 300 ms wait should have batched some of the four requests together"
    for s in shared:
        assert s.attributes is not None
        mates = [
            b for b in shared if b.attributes and b.attributes["cvae.batch.number"] == s.attributes["cvae.batch.number"]
        ]
        assert len(mates) == s.attributes["cvae.batch.size"]
        linked = {link.context.span_id for link in s.links}
        assert linked == {b.parent.span_id for b in mates if b is not s and b.parent}  # the others' request spans
        # the batch's inference appears in each request's trace, with the same times
        inference = [x for x in exporter.get_finished_spans() if x.name == "inference" and x.parent and s.context
                     and x.parent.span_id == s.context.span_id]  # fmt: skip
        assert len(inference) == 1


def test_the_engine_in_a_thread_records_the_same_stages(tiny_model_dir: Path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(model_dir=tiny_model_dir, inference_process=False)
    with TestClient(create_app(settings, tracing=Tracing(provider))) as c:
        assert c.post("/generate", json={"digit": 2, "seed": 3}).status_code == 200
    (server,) = servers(exporter, "POST /generate")
    spans = trace_of(exporter, server)
    assert children(spans, server) == {"parse", "queue", "batch"}
    assert children(spans, spans["batch"][0]) == {"inference", "png"}


def test_an_encode_request_records_its_image_and_inference(traced):
    c, exporter = traced
    exporter.clear()
    assert upload(c, encoded(drawing())).status_code == 200
    wait_for(lambda: len(servers(exporter, "POST /encode")) == 1, 5)
    (server,) = servers(exporter, "POST /encode")
    spans = trace_of(exporter, server)
    assert children(spans, server) == {"parse", "queue", "batch"}
    assert children(spans, spans["batch"][0]) == {"image", "inference"}


def test_a_request_refused_before_the_engine_is_its_server_span_alone(traced):
    c, exporter = traced
    exporter.clear()
    assert c.post("/generate", json={"digit": 99}).status_code == 422
    wait_for(lambda: len(servers(exporter, "POST /generate")) == 1, 5)
    (server,) = servers(exporter, "POST /generate")
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 422
    assert set(trace_of(exporter, server)) == {"POST /generate"}


def test_a_request_its_caller_sampled_out_records_nothing(traced):
    c, exporter = traced
    exporter.clear()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}  # flags 00: not sampled (the default sampler obeys)
    assert c.post("/generate", json={"digit": 5, "seed": 2}, headers=headers).status_code == 200
    assert c.get("/livez").status_code == 200
    wait_for(lambda: len(servers(exporter, "GET /livez")) == 1, 5)
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /livez"]


def test_traces_are_asked_for_by_the_otel_environment_only():
    assert not asked({}) and from_environment({}) is None
    assert not asked({"OTEL_SERVICE_NAME": "x"})  # naming the service asks for nothing
    assert asked({"OTEL_TRACES_EXPORTER": "console"})
    assert asked({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not asked({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not asked({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
    tracing = from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(tracing, Tracing)
    tracing.provider.shutdown()


def test_untraced_the_server_imports_no_sdk_and_adds_nothing_to_a_request(tiny_model_dir: Path):
    """A request through the app as `python -m app` builds it, in a fresh interpreter without OTEL_* variables.
    FastAPI imports OpenTelemetry's API itself (its own telemetry, idle without a configured provider); the SDK, its
    exporters and app/telemetry/otel.py stay out, and so does torch."""
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.factory import create_app\n"
        "from app.settings import Settings\n"
        "app = create_app(Settings(model_dir=sys.argv[1]))\n"
        "assert app.state.tracing is None\n"
        "assert not [m for m in app.user_middleware if m.cls.__name__ == 'TraceRequests'], app.user_middleware\n"
        "with TestClient(app) as c:\n"
        "    assert c.post('/generate', json={'digit': 1}).status_code == 200\n"
        "heavy = ('opentelemetry.sdk', 'opentelemetry.exporter', 'app.telemetry.otel', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model_dir)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
