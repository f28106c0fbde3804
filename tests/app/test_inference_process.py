"""The engine in the inference process (app/engine/process.py, child.py) against the engine in a thread: the same
bytes for both endpoints; its typed messages; and what happens when the process dies, cannot start, runs other code,
or the service stops."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import app.engine.process
from app.core.errors import ServiceError
from app.core.stages import Stage
from app.engine.process import ProcessEngine
from app.engine.wire import (
    MESSAGES,
    Batch,
    BatchFailed,
    Done,
    Ready,
    StartFailed,
    Stop,
    WireError,
    frame,
    parse,
    wire_version,
)
from app.factory import create_app, engine_of
from app.operations.encode import EncodeResult, Upload
from app.operations.generate import GenerateSpec
from app.operations.grid import Drawing
from app.settings import Settings
from tests.conftest import drawing, encoded, upload, wait_for

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BODIES = [{"digit": d % 10, "n": 1 + d % 5, "seed": 200 + d, "padding": d % 3, "scale": 1 + d % 2} for d in range(12)]
UPLOADS = [(encoded(drawing((50 + 9 * i, 70))), None if i % 2 else str(i)) for i in range(6)] + [(b"junk", None)]


def spawned(model_dir: Path) -> ProcessEngine:
    """An inference process started as the service starts it (not waited for)."""
    engine = engine_of(Settings(model_dir=model_dir, inference_process=True))
    assert isinstance(engine, ProcessEngine)
    return engine


def _answers(c: TestClient) -> tuple[list[bytes], list[bytes]]:
    return [c.post("/generate", json=b).content for b in BODIES], [upload(c, *u).content for u in UPLOADS]


def test_inference_process_is_the_default():
    assert Settings().inference_process is True


def test_process_and_thread_give_byte_identical_answers(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=False))) as c:
        in_thread = _answers(c)
        json_thread = c.post("/generate", json=BODIES[3], headers={"Accept": "application/json"}).json()
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=True))) as c:
        assert isinstance(c.app.state.service.runtime.engine, ProcessEngine)
        in_process = _answers(c)
        with ThreadPoolExecutor(len(BODIES)) as pool:  # concurrent: they share batches
            together = list(pool.map(lambda b: c.post("/generate", json=b).content, BODIES))
        json_process = c.post("/generate", json=BODIES[3], headers={"Accept": "application/json"}).json()
    assert in_process == in_thread
    assert together == in_thread[0]
    assert json_process == json_thread  # the latents the batch drew from, sent back by the engine


# --- messages -------------------------------------------------------------------------------------------------


def test_every_message_crosses_the_wire_unchanged():
    spec = GenerateSpec(labels=(1, 2), n=2, latent=None, seed=5, temperature=0.8, columns=2, padding=2, scale=1,
                        width=62, height=62, with_latents=False)  # fmt: skip
    latent_spec = spec._replace(latent=((0.5, -1.0, 2.0, 0.1), (1e-30, 3.0, -0.0, 4.0)), seed=None, with_latents=True)
    result = EncodeResult(label=3, inferred=True, probabilities=[0.5, 0.5], mean=[0.1], log_var=[-1.0])
    drawings = [Drawing(b"png", None, None), Drawing(b"png", [3, 3], [[0.5, 1e-30], [2.0, 0.1]])]
    messages = [
        Ready(version=wire_version(), model_id="m", pass_rows=8, score_uploads=4),
        StartFailed(reason="no model"),
        Batch(batch_id=1, operation="generate", payloads=[spec], traceparents=None),
        Batch(batch_id=1, operation="generate", payloads=[spec], traceparents=[TRACEPARENT]),
        Batch(2, "encode", [Upload(b"\x89PNG", None), Upload(b"", 7, 100)], traceparents=[TRACEPARENT] * 2),
        Done(batch_id=1, operation="generate", outcomes=drawings, stages=None),
        Done(1, "generate", [Drawing(b"png", None, None)], stages=[Stage("inference", None, 10, 20)]),
        BatchFailed(batch_id=3, reason="boom"),
        Stop(),
    ]
    assert {type(m).__name__ for m in messages} == set(MESSAGES)
    for message in messages:
        assert parse(frame(message)[8:]) == message
    back = parse(frame(Batch(batch_id=4, operation="generate", payloads=[latent_spec], traceparents=None))[8:])
    assert isinstance(back, Batch) and back.payloads[0] == latent_spec and isinstance(back.payloads[0], GenerateSpec)
    refused = ServiceError(415, "not an image", kind="unsupported-image", title="Not an image")
    back = parse(frame(Done(5, "encode", outcomes=[result, refused], stages=[Stage("image", 1, 3, 4)]))[8:])
    assert isinstance(back, Done) and back.outcomes[0] == result and isinstance(back.outcomes[0], EncodeResult)
    assert back.stages == [Stage("image", 1, 3, 4)] and isinstance(back.stages[0], Stage)
    error = back.outcomes[1]
    assert isinstance(error, ServiceError) and error.body() == refused.body()


def test_a_frame_that_is_no_message_is_a_wire_error():
    for body in (b"", b"not a pickle", frame(Stop())[8:].replace(b"Stop", b"Nope")):
        with pytest.raises(WireError):
            parse(body)


def test_the_wire_version_follows_the_messages_fields(monkeypatch):
    before = wire_version()
    wire_version.cache_clear()
    monkeypatch.setattr(Upload, "_fields", ("digit", "data"))  # as if two fields had swapped places
    try:
        assert wire_version() != before
    finally:
        monkeypatch.undo()
        wire_version.cache_clear()
    assert wire_version() == before


def test_a_child_running_other_code_is_refused(tiny_model_dir: Path, monkeypatch):
    monkeypatch.setattr(app.engine.process, "wire_version", lambda: "another layout")  # the server's side only

    async def main() -> str:
        engine = spawned(tiny_model_dir)
        try:
            await engine.prepare()
        except RuntimeError as e:
            return str(e)
        finally:
            await engine.close()
        return "started"

    assert "runs other code" in asyncio.run(main())


# --- the process's life ---------------------------------------------------------------------------------------


def test_a_dead_inference_process_fails_its_batch_with_503_and_is_replaced(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        engine = c.app.state.service.runtime.engine
        before = c.post("/generate", json=BODIES[0]).content
        first = engine.pid
        os.kill(first, signal.SIGSTOP)  # the next batch waits in the child...
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(c.post, "/generate", json=BODIES[0]), pool.submit(upload, c, *UPLOADS[0])]
            # one batch in the child, the other request queued behind it (one batch at a time)
            wait_for(lambda: len(engine._pending) == 1 and c.app.state.service.runtime.scheduler.queued_jobs == 1, 10)
            os.kill(first, signal.SIGKILL)  # ...which dies with it
            answers = [p.result(30) for p in pending]
        for r in answers:
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.headers["content-type"] == "application/problem+json"
        wait_for(lambda: c.get("/readyz").status_code == 200)
        assert engine.pid != first and engine.restarts == 1
        assert c.post("/generate", json=BODIES[0]).content == before
        assert upload(c, *UPLOADS[0]).status_code == 200


def test_a_hung_inference_process_is_replaced_and_its_batch_answered_503(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        engine = c.app.state.service.runtime.engine
        engine.batch_timeout_s = 0.5
        first = engine.pid
        os.kill(first, signal.SIGSTOP)  # alive, but never answers
        started = time.monotonic()
        r = c.post("/generate", json=BODIES[0])
        assert r.status_code == 503 and r.headers["retry-after"] and time.monotonic() - started < 5
        wait_for(lambda: c.get("/readyz").status_code == 200)
        assert engine.pid != first and engine.restarts == 1
        assert c.post("/generate", json=BODIES[0]).status_code == 200


def test_the_inference_process_ends_with_the_service(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        child = c.app.state.service.runtime.engine.process
        assert child.poll() is None
    assert child.poll() is not None


def test_an_inference_process_that_cannot_load_the_model_fails_start_up(tmp_path: Path):
    async def main() -> str:
        engine = spawned(tmp_path / "missing")
        try:
            await engine.prepare()
        except RuntimeError as e:
            return str(e)
        finally:
            await engine.close()
        return "started"

    message = asyncio.run(main())
    assert "could not load the model" in message and "missing" in message


def test_the_inference_process_ignores_ctrl_c_and_exits_when_the_server_goes(tiny_model_dir: Path):
    async def main() -> None:
        engine = spawned(tiny_model_dir)
        await engine.prepare()
        try:
            child = engine.process
            os.kill(child.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
            await asyncio.sleep(0.3)
            assert child.poll() is None
            engine._closing = True  # (no replacement)
            engine._writer.close()  # the server's end of the socket goes away, as if it had died
            for _ in range(200):
                if child.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert child.poll() == 0
        finally:
            await engine.close()

    asyncio.run(main())


@pytest.mark.parametrize("inference_process", [True, False])
def test_metrics_count_batches_of_both_operations_in_either_mode(tiny_model_dir: Path, inference_process: bool):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=inference_process))) as c:
        c.post("/generate", json={"digit": 1, "n": 3})
        upload(c, *UPLOADS[0])
        text = c.get("/metrics").text
    for operation in ("generate", "encode"):
        assert f'cvae_batch_size_requests_count{{model="digits",operation="{operation}"}} 1.0' in text
        assert f'cvae_batch_queue_wait_seconds_bucket{{le="0.0005",model="digits",operation="{operation}"}}' in text
        assert f'cvae_inference_duration_seconds_count{{model="digits",operation="{operation}"}} 1.0' in text
