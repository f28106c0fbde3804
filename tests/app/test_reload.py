"""Reloading the model while serving (app/serving/reload.py): POST /admin/reload switches to what CVAE_MODEL_DIR holds
now (a symlink repointed, or contents replaced), after checking it in a new inference process; a model that cannot
be served is refused, and the old one keeps serving; rollback is the same step back; every answer names its model.
Under load and over 20 reloads, with real uvicorn: tests/system/test_reload_load.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from app.telemetry.metrics import Metrics
from model.manifest import ModelCard
from tests.conftest import TINY, drawing, encoded, make_model_dir, metric, problem, upload

ADMIN_KEY = "admin-key-for-the-tests-0123"
ADMIN = {"X-API-Key": ADMIN_KEY}
SAMPLE = {"digit": [1, 7], "n": 2, "seed": 5}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two compatible models (other seeds), a symlink to serve through, and models a reload must refuse."""
    root = tmp_path_factory.mktemp("reload")
    found = {"a": make_model_dir(root / "a", seed=10), "b": make_model_dir(root / "b", seed=11)}
    found["tampered"] = Path(shutil.copytree(found["b"], root / "tampered"))
    with open(found["tampered"] / "decoder.pt", "r+b") as f:
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))
    found["missing"] = root / "nothing-here"
    found["latent"] = make_model_dir(root / "latent", dataclasses.replace(TINY, latent_dim=TINY.latent_dim + 1))
    found["labels"] = make_model_dir(root / "labels", dataclasses.replace(TINY, num_classes=9))
    found["current"] = root / "current"
    found["current"].symlink_to(found["a"])
    return found


def point(models: dict[str, Path], name: str) -> None:
    """Repoint the served symlink at models[name], as `ln -sfn` does (a new link renamed over the old one)."""
    new = models["current"].with_name("current.new")
    new.symlink_to(models[name])
    new.replace(models["current"])


@pytest.fixture(scope="module")
def admin(models: dict[str, Path]) -> Iterator[TestClient]:
    """The service serving models["current"], with an admin key; every test leaves model a serving."""
    with TestClient(create_app(Settings(model_dir=models["current"], admin_api_keys=ADMIN_KEY))) as c:
        yield c


def model_id(path: Path) -> str:
    return ModelCard(manifest=json.loads((path / "manifest.json").read_text()), path=path).id


def test_a_reload_serves_the_new_model_every_answer_names_it_and_rolling_back_is_the_same_step(admin, models):
    a, b = model_id(models["a"]), model_id(models["b"])
    assert a != b and admin.get("/model").json()["id"] == a
    before = admin.post("/generate", json=SAMPLE)
    assert before.headers["x-model-id"] == a
    assert upload(admin, encoded(drawing())).headers["x-model-id"] == a
    reloaded = metric(admin, 'cvae_reloads_total{model="digits",outcome="reloaded"}')

    point(models, "b")
    r = admin.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "digits", "outcome": "reloaded", "model_id": b, "previous_id": a}
    assert admin.get("/model").json()["id"] == b
    after = admin.post("/generate", json=SAMPLE)
    assert after.headers["x-model-id"] == b and after.content != before.content
    as_json = admin.post("/generate", json=SAMPLE, headers={"Accept": "application/json"})
    assert as_json.headers["x-model-id"] == as_json.json()["model_id"] == b
    encoding = upload(admin, encoded(drawing()))
    assert encoding.headers["x-model-id"] == encoding.json()["model_id"] == b
    assert admin.get("/readyz").json() == {"status": "ready", "model_id": b, "models": {"digits": b}}

    point(models, "a")  # rollback: the previous model, by the same step
    assert admin.post("/admin/reload", headers=ADMIN).json()["model_id"] == a
    again = admin.post("/generate", json=SAMPLE)
    assert again.headers["x-model-id"] == a and again.content == before.content  # bit for bit what a drew before
    assert metric(admin, 'cvae_reloads_total{model="digits",outcome="reloaded"}') == reloaded + 2
    assert metric(admin, f'cvae_model_answers_total{{model="digits",model_id="{b}",operation="encode"}}') == 1


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("tampered", "does not match the manifest"),
        ("missing", "does not exist"),
        ("latent", "latent_dim 5 differs from the serving model's 4"),
        ("labels", "labels"),
        ("slow", "not ready within CVAE_RELOAD_TIMEOUT_S"),
    ],
)
def test_a_model_that_cannot_be_served_is_refused_and_the_old_one_keeps_serving(admin, models, caplog, bad, why):
    a = model_id(models["a"])
    refused = metric(admin, 'cvae_reloads_total{model="digits",outcome="refused"}')
    reloader = admin.app.state.service.reloaders.by_name["digits"]
    timeout_s = reloader.timeout_s
    if bad == "slow":  # model b is good, but takes longer than this to load, check and warm up
        point(models, "b")
        reloader.timeout_s = 0.05
    else:
        point(models, bad)
    try:
        with caplog.at_level(logging.ERROR, logger="app.serving.reload"):
            r = admin.post("/admin/reload", headers=ADMIN)
    finally:
        reloader.timeout_s = timeout_s
        point(models, "a")
    body = problem(r, 409)
    assert why in body["detail"] and a in body["detail"]
    assert [rec.getMessage() for rec in caplog.records if why in rec.getMessage() and "refused" in rec.getMessage()]
    assert metric(admin, 'cvae_reloads_total{model="digits",outcome="refused"}') == refused + 1
    assert admin.get("/model").json()["id"] == a
    served = admin.post("/generate", json=SAMPLE)
    assert served.status_code == 200 and served.headers["x-model-id"] == a


def test_a_directory_that_changes_while_it_is_read_is_refused(admin, models):
    # The card says model b, but the inference process finds model a: what copying over a served directory can do.
    a, b = model_id(models["a"]), model_id(models["b"])
    reloader = admin.app.state.service.reloaders.by_name["digits"]
    read = reloader.read
    b_card_of_a = ModelCard(manifest=json.loads((models["b"] / "manifest.json").read_text()), path=models["a"])
    reloader.read = lambda: b_card_of_a
    try:
        body = problem(admin.post("/admin/reload", headers=ADMIN), 409)
    finally:
        reloader.read = read
    assert f"changed while it was read (model {b}, then {a})" in body["detail"]
    assert admin.get("/model").json()["id"] == a


def test_the_reload_path_is_post_only(admin):
    assert problem(admin.get("/admin/reload", headers=ADMIN), 405)["detail"] == "GET is not allowed on /admin/reload"


def test_the_reload_path_needs_the_admin_key(admin):
    assert problem(admin.post("/admin/reload"), 401)["type"].endswith("missing-api-key")
    assert problem(admin.post("/admin/reload", headers={"X-API-Key": "not-the-admin-key-000"}), 401)


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_without_an_admin_key_the_reload_path_does_not_exist(client, method):
    missing = problem(client.request(method, "/admin/reload"), 404)
    assert missing["detail"] == f"no route for {method} /admin/reload"
    assert missing["type"] == problem(client.request(method, "/admin/reloads"), 404)["type"]
    assert "/admin/reload" not in client.get("/openapi.json").json()["paths"]


def test_contents_replaced_in_place_are_served_by_the_thread_engine_too(models, tmp_path):
    served = Path(shutil.copytree(models["a"], tmp_path / "served"))
    settings = Settings(model_dir=served, admin_api_keys=ADMIN_KEY, inference_process=False)
    with TestClient(create_app(settings)) as c:
        assert c.post("/generate", json=SAMPLE).headers["x-model-id"] == model_id(models["a"])
        for item in served.iterdir():
            item.unlink()
        for item in models["b"].iterdir():
            shutil.copy(item, served / item.name)
        assert c.post("/admin/reload", headers=ADMIN).json()["model_id"] == model_id(models["b"])
        assert c.post("/generate", json=SAMPLE).headers["x-model-id"] == model_id(models["b"])


def test_answers_are_counted_for_each_served_models_current_and_previous_model_id_only(tiny_model_dir):
    metrics = Metrics(models=["a", "b"])
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    metrics.set_model("b", ModelCard(manifest={**manifest, "id": "b1"}, path=tiny_model_dir))
    metrics.count_answer("b", "b1", "generate")
    for name in ("m1", "m2", "m3"):
        metrics.set_model("a", ModelCard(manifest={**manifest, "id": name}, path=tiny_model_dir))
        metrics.count_answer("a", name, "generate")
        metrics.count_answer("a", "m1", "encode")  # counted only while m1 is current or previous
    exposed = {(s.labels["model"], s.labels["model_id"]) for m in metrics.answers.collect() for s in m.samples}
    assert exposed == {("a", "m2"), ("a", "m3"), ("b", "b1")}  # each served model's own ids
