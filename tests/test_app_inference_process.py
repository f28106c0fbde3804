"""/generate's batches in the inference process (app/worker.py): the same bytes as in a thread, and what happens
when the process dies, cannot start, or the service stops."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from app.worker import InferenceProcess

BODIES = [{"digit": d % 10, "n": 1 + d % 5, "seed": 200 + d, "padding": d % 3, "scale": 1 + d % 2} for d in range(12)]


def _pngs(c: TestClient) -> list[bytes]:
    return [c.post("/generate", json=b).content for b in BODIES]


def test_inference_process_is_the_default():
    assert Settings().inference_process is True


def test_process_and_thread_give_byte_identical_pngs_and_latents(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=False))) as c:
        in_thread = _pngs(c)
        json_thread = c.post("/generate", json=BODIES[3], headers={"Accept": "application/json"}).json()
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=True))) as c:
        assert c.app.state.runtime.process is not None
        in_process = _pngs(c)
        with ThreadPoolExecutor(len(BODIES)) as pool:  # concurrent: they share batches
            together = list(pool.map(lambda b: c.post("/generate", json=b).content, BODIES))
        json_process = c.post("/generate", json=BODIES[3], headers={"Accept": "application/json"}).json()
    assert in_process == in_thread
    assert together == in_thread
    assert json_process == json_thread  # latents are recomputed in the server, and agree with the batch's


def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_inference_process_fails_its_batch_with_503_and_is_replaced(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        process = c.app.state.runtime.process
        before = c.post("/generate", json=BODIES[0]).content
        first = process.pid
        os.kill(first, signal.SIGSTOP)  # the next batch waits in the child...
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, "/generate", json=BODIES[0])
            time.sleep(0.5)
            os.kill(first, signal.SIGKILL)  # ...which dies with it
            r = pending.result(30)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.headers["content-type"] == "application/problem+json"
        _wait_for(lambda: c.get("/readyz").status_code == 200)
        assert process.pid != first and process.restarts == 1
        assert c.post("/generate", json=BODIES[0]).content == before


def test_the_inference_process_ends_with_the_service(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        child = c.app.state.runtime.process.process
        assert child.poll() is None
    assert child.poll() is not None


def test_an_inference_process_that_cannot_load_the_model_fails_start_up(tmp_path: Path):
    async def main() -> str:
        process = InferenceProcess(Settings(model_dir=tmp_path / "missing"))
        try:
            await process.start()
        except RuntimeError as e:
            return str(e)
        finally:
            await process.stop()
        return "started"

    message = asyncio.run(main())
    assert "could not load the model" in message and "missing" in message


def test_the_inference_process_ignores_ctrl_c_and_exits_when_the_server_goes(tiny_model_dir: Path):
    async def main() -> None:
        process = InferenceProcess(Settings(model_dir=tiny_model_dir))
        await process.start()
        try:
            child = process.process
            os.kill(child.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
            await asyncio.sleep(0.3)
            assert child.poll() is None
            process._stopping = True  # (no replacement)
            process._writer.close()  # the server's end of the socket goes away, as if it had died
            for _ in range(200):
                if child.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert child.poll() == 0
        finally:
            await process.stop()

    asyncio.run(main())


@pytest.mark.parametrize("inference_process", [True, False])
def test_metrics_count_batches_in_either_mode(tiny_model_dir: Path, inference_process: bool):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=inference_process))) as c:
        c.post("/generate", json={"digit": 1, "n": 3})
        text = c.get("/metrics").text
    assert "cvae_batch_size_requests_count" in text and "cvae_batch_queue_wait_seconds_bucket" in text
