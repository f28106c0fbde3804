"""Probes, /model, /metrics, the OpenAPI document, generic HTTP errors, settings and start-up failures."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine.process import ProcessEngine
from app.factory import create_app
from app.settings import Settings, default_model_dir
from model.manifest import ModelDirError
from tests.conftest import MAX_UPLOAD_BYTES, drawing, encoded, metric, problem, upload

ENDPOINTS = {("post", "/generate"), ("post", "/encode"), ("get", "/livez"), ("get", "/readyz"), ("get", "/model"),
             ("get", "/metrics")}  # fmt: skip


# --- probes ---------------------------------------------------------------------------------------------------


def test_livez_answers(client):
    assert client.get("/livez").json() == {"status": "alive"}


def test_readyz_is_200_once_the_model_is_loaded_and_warmed_up(client):
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["model_id"].startswith("cvae-")


def test_readyz_is_503_while_draining(client):
    client.app.state.service.draining = True
    try:
        p = problem(client.get("/readyz"), 503)
        assert "shutting down" in p["detail"]
        assert client.get("/livez").status_code == 200
    finally:
        client.app.state.service.draining = False
    assert client.get("/readyz").status_code == 200


def test_readiness_ends_with_the_lifespan(tiny_model_dir):
    app = create_app(Settings(model_dir=tiny_model_dir))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
    assert app.state.service.ready is False


@pytest.mark.parametrize("inference_process", [True, False])
def test_probes_answer_while_inference_is_busy(tiny_model_dir, inference_process):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=inference_process))) as c:
        engine = c.app.state.service.runtime.engine
        if isinstance(engine, ProcessEngine):  # pause the inference process
            pid = engine.pid
            os.kill(pid, signal.SIGSTOP)

            def release() -> None:
                os.kill(pid, signal.SIGCONT)
        else:
            gate = threading.Event()
            engine._executor.submit(gate.wait, 10)  # occupy the one inference thread
            release = gate.set
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(c.post, "/generate", json={"digit": 1, "seed": 1}),
                       pool.submit(upload, c, encoded(drawing()))]  # fmt: skip
            try:
                started = time.perf_counter()
                assert c.get("/livez").status_code == 200
                assert c.get("/readyz").status_code == 200
                assert c.get("/metrics").status_code == 200
                assert time.perf_counter() - started < 2
                assert not any(p.done() for p in pending)
            finally:
                release()
            assert [p.result(timeout=10).status_code for p in pending] == [200, 200]


# --- information ----------------------------------------------------------------------------------------------


def test_model_shows_what_a_client_needs_of_the_manifest(client, tiny_model_dir):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    shown = client.get("/model").json()
    for key in ("id", "latent_dim", "image_shape", "labels", "metrics", "format_version"):
        assert shown[key] == manifest[key]
    assert shown["prior"]["kind"] == manifest["prior"]["kind"]
    assert shown["prior"]["temperature"] == manifest["prior"]["temperature"]
    assert shown["config"] == {"model": manifest["config"]["model"]}


def test_model_does_not_show_how_it_was_made():
    """The shipped model's manifest: its training command, options, git commit and file checksums stay private."""
    from app.api.routes.ops import public_manifest
    from app.settings import default_model_dir

    manifest = json.loads((default_model_dir() / "manifest.json").read_text())
    shown = json.dumps(public_manifest(manifest))
    assert manifest["reproduce"] and manifest["config"]["git_commit"]
    for private in (manifest["reproduce"], manifest["config"]["git_commit"], manifest["config"]["training"]["data_dir"],
                    *manifest["data"]["files"].values(), *manifest["artifacts"].values()):  # fmt: skip
        assert str(private) not in shown
    for key in ("reproduce", "artifacts", "torch_version"):
        assert key not in json.loads(shown)
    assert json.loads(shown)["prior"]["temperature"] == manifest["prior"]["temperature"]  # what the page reads


def test_a_refusal_before_any_route_is_counted_under_its_endpoint(client):
    """413 (the body limit) and 415 (strict parsing) on both endpoints, and a file under /static: labelled by the
    endpoint from app/paths.py, whoever answered (tests/system/test_serve.py checks 408, 429 and 503 on a real
    server)."""

    def count(path: str, status: int) -> float:
        series = f'cvae_http_requests_total{{method="POST",route="{path}",status="{status}"}}'
        return metric(client, series) if series in client.get("/metrics").text else 0.0

    before = {(path, status): count(path, status) for path in ("/generate", "/encode") for status in (413, 415)}
    for path in ("/generate", "/encode"):
        assert client.post(path, content=b"x" * (MAX_UPLOAD_BYTES + 1)).status_code == 413
        assert client.post(path, content=b"hi", headers={"Content-Type": "text/plain"}).status_code == 415
    client.get("/static/nope.js")
    for (path, status), was in before.items():
        assert count(path, status) == was + 1, (path, status)
    assert metric(client, 'cvae_http_requests_total{method="GET",route="/static",status="404"}') >= 1


def test_metrics_are_prometheus_text_with_the_services_series(client):
    client.post("/generate", json={"digit": [3, 4], "n": 5, "seed": 1})
    client.get("/nope/123")
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for expected in [
        'cvae_http_requests_total{method="POST",route="/generate",status="200"}',
        'cvae_http_requests_total{method="GET",route="unmatched",status="404"}',  # never the raw path
        'cvae_http_request_duration_seconds_bucket{le="0.0005",method="POST",route="/generate"}',
        'cvae_http_request_duration_seconds_bucket{le="2.5",method="POST",route="/generate"}',
        "cvae_http_requests_in_flight ",
        'cvae_images_generated_total{digit="3",model="digits"}',
        'cvae_inference_duration_seconds_count{model="digits",operation="generate"}',
        "cvae_batch_size_samples_bucket",
        "cvae_batch_size_requests_bucket",
        "cvae_batch_queue_wait_seconds_bucket",
        "cvae_model_info{",
        "cvae_ready 1.0",
        "process_cpu_seconds_total",
    ]:
        assert expected in text, expected
    assert "/nope/123" not in text


def test_each_app_has_its_own_metrics_registry(tiny_model_dir):
    a, b = create_app(Settings(model_dir=tiny_model_dir)), create_app(Settings(model_dir=tiny_model_dir))
    assert a.state.metrics.registry is not b.state.metrics.registry


def test_openapi_lists_every_endpoint_with_examples_and_problem_errors(client):
    doc = client.get("/openapi.json").json()
    ops = {(method, path): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert ops.keys() >= ENDPOINTS
    assert "example" in json.dumps(doc["paths"]["/generate"]) and "examples" in json.dumps(doc["paths"]["/generate"])
    for key in ENDPOINTS - {("get", "/livez"), ("get", "/readyz")}:
        assert "example" in json.dumps(ops[key]) or "example" in json.dumps(doc["components"]), key
    for (method, path), op in ops.items():
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)
    assert "HTTPValidationError" not in json.dumps(doc)
    assert set(doc["paths"]["/generate"]["post"]["responses"]["200"]["content"]) == {"image/png", "application/json"}
    examples = doc["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for example in examples.values():  # every example is a valid request for the model served
        assert client.post("/generate", json=example["value"]).status_code == 200, example


def test_docs_page_is_served(client):
    assert client.get("/docs").status_code == 200


# --- generic HTTP errors --------------------------------------------------------------------------------------


def test_unknown_path_is_a_404_problem(client):
    assert problem(client.get("/nope"), 404)["type"] == "about:blank"


def test_wrong_method_is_a_405_problem_with_allow(client):
    r = client.get("/generate")
    problem(r, 405)
    assert r.headers["allow"] == "POST"


def test_unexpected_failure_is_a_500_problem_without_internals(tiny_model_dir, monkeypatch):
    app = create_app(Settings(model_dir=tiny_model_dir, inference_process=False))
    with TestClient(app, raise_server_exceptions=False) as c:
        service = app.state.service.runtime.engine.inference

        def broken(*args):
            raise RuntimeError("secret internals")

        monkeypatch.setattr(service, "decode", broken)
        monkeypatch.setattr(service, "score", broken)
        p = problem(c.post("/generate", json={"digit": 1}), 500)
        assert "secret" not in json.dumps(p)
        p = problem(upload(c, encoded(drawing())), 500)
        assert "secret" not in json.dumps(p)
        assert c.get("/readyz").status_code == 200  # one failed batch does not take the service down


# --- settings -------------------------------------------------------------------------------------------------


def test_settings_come_from_cvae_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("CVAE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("CVAE_MAX_BATCH", "7")
    monkeypatch.setenv("CVAE_MAX_UPLOAD_BYTES", "123")
    s = Settings()
    assert (s.model_dir, s.max_batch, s.max_upload_bytes) == (tmp_path, 7, 123)


def test_settings_default_to_the_shipped_model():
    assert default_model_dir() == Path(__file__).resolve().parents[2] / "artifacts" / "default"


def test_invalid_setting_is_refused(monkeypatch):
    monkeypatch.setenv("CVAE_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads"):
        Settings()


def test_settings_are_read_from_the_environment_when_the_app_is_built_and_the_model_at_start_up(
    tiny_model_dir, monkeypatch
):
    monkeypatch.setenv("CVAE_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("CVAE_MAX_UPLOAD_BYTES", "999")
    monkeypatch.setenv("CVAE_INFERENCE_PROCESS", "false")
    app = create_app()
    assert app.state.settings.max_upload_bytes == 999 and app.state.service.runtime is None
    monkeypatch.setenv("CVAE_MAX_UPLOAD_BYTES", "5")  # too late: the middleware were configured when built
    with TestClient(app) as c:
        assert c.get("/readyz").json()["status"] == "ready"
        p = problem(c.post("/admin/reload", content=b"x" * 1000), 413)
        assert "limit of 999 bytes" in p["detail"]


# --- start-up failures ----------------------------------------------------------------------------------------


def test_start_up_fails_on_a_missing_model_directory_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelDirError, match="no-such-model"), TestClient(create_app(Settings(model_dir=missing))):
        pass


@pytest.fixture
def corrupted_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose decoder.pt no longer matches the manifest's checksum."""
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "corrupted"))
    with open(copy / "decoder.pt", "ab") as f:
        f.write(b"tampered")
    return copy


def test_start_up_fails_when_a_checksum_does_not_match_naming_the_file(corrupted_model_dir):
    with (
        pytest.raises(ModelDirError, match=r"decoder\.pt.*sha256"),
        TestClient(create_app(Settings(model_dir=corrupted_model_dir))),
    ):
        pass


def test_python_m_app_exits_1_with_one_log_line_on_a_bad_model(monkeypatch, caplog, corrupted_model_dir):
    from app.__main__ import main

    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)  # keep pytest's logging as it is
    monkeypatch.setenv("CVAE_MODEL_DIR", str(corrupted_model_dir))
    with caplog.at_level(logging.INFO):
        assert main(["--port", "0"]) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "decoder.pt" in errors[0].getMessage() and errors[0].exc_info is None
