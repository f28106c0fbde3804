"""Several models in one service (CVAE_MODELS): the setting read and refused, one runtime per model, ?model= on every
operation and on GET /model (the fast path and the routes alike), 404 for a name not served, X-Model-Id, GET /models,
each model's own body limits, reloads per model, metrics by model and the Open Inference Protocol's models of each."""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.factory import create_app
from app.settings import ModelEntry, Settings, read_models
from model.manifest import ModelCard
from tests.conftest import FASHION, TINY, drawing, encoded, make_model_dir, metric, problem

ADMIN_KEY = "admin-key-for-the-models-0123"
ADMIN = {"X-API-Key": ADMIN_KEY}
WIDE = dataclasses.replace(TINY, latent_dim=6)  # the second model's latent: its own body limits
FAST = {"Content-Type": "application/json"}
ROUTE = {"Content-Type": "application/json; charset=utf-8"}  # JSON to the route, not taken by the fast path


def model_id(path: Path) -> str:
    return ModelCard(manifest=json.loads((path / "manifest.json").read_text()), path=path).id


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """The digits model (the tiny one), two fashion models (latent 6, other seeds), one of other classes, and the
    symlink the fashion model is served through."""
    root = tmp_path_factory.mktemp("multi")
    found = {
        "digits": tiny_model_dir,
        "fashion-a": make_model_dir(root / "fashion-a", WIDE, seed=1, labels=FASHION, preprocessing="frame"),
        "fashion-b": make_model_dir(root / "fashion-b", WIDE, seed=2, labels=FASHION, preprocessing="frame"),
        "digits-wide": make_model_dir(root / "digits-wide", WIDE, seed=3),
    }
    found["fashion"] = root / "fashion"
    found["fashion"].symlink_to(found["fashion-a"])
    return found


def point(dirs: dict[str, Path], name: str) -> None:
    new = dirs["fashion"].with_name("fashion.new")
    new.symlink_to(dirs[name])
    new.replace(dirs["fashion"])


@pytest.fixture(scope="module")
def two(dirs: dict[str, Path]) -> Iterator[TestClient]:
    """The service serving digits (the default) and fashion, with an admin key; every test leaves fashion-a serving."""
    models = f"digits={dirs['digits']},fashion={dirs['fashion']}"
    with TestClient(create_app(Settings(models=models, admin_api_keys=ADMIN_KEY))) as c:
        yield c


# --- the setting ------------------------------------------------------------------------------------------------


def test_without_cvae_models_the_one_model_is_cvae_model_dir_named_cvae_model_name(tmp_path):
    settings = Settings(model_dir=tmp_path, model_name="mnist")
    assert settings.served_models() == (ModelEntry("mnist", tmp_path),)


def test_a_list_names_each_model_and_its_first_is_the_default():
    entries = read_models(" b=/m/b , a-1=rel/a,c_2=/m/c,", "digits")  # spaces and a trailing comma are fine
    assert entries == (ModelEntry("b", Path("/m/b")), ModelEntry("a-1", Path("rel/a")), ModelEntry("c_2", Path("/m/c")))
    assert Settings(models="x=/a,y=/b", model_dir=Path("/ignored")).served_models()[0] == ModelEntry("x", Path("/a"))


def test_a_folder_serves_its_model_subfolders_the_one_named_cvae_model_name_first(tmp_path):
    for name in ("zeta", "digits", "alpha"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "notes").mkdir()  # no manifest: not a model
    (tmp_path / "README").write_text("")
    names = [e.name for e in read_models(str(tmp_path), "digits")]
    assert names == ["digits", "alpha", "zeta"]
    assert [e.name for e in read_models(str(tmp_path), "mnist")] == ["alpha", "digits", "zeta"]  # else the first
    assert read_models(str(tmp_path), "digits")[0].directory == tmp_path / "digits"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("digits=/a,fashion", "'fashion' is not NAME=DIRECTORY"),
        ("=/a", "is not NAME=DIRECTORY"),
        ("digits=", "is not NAME=DIRECTORY"),
        ("Digits=/a", "the model name 'Digits' must be 1 to 63 of a-z 0-9 - _"),
        ("-x=/a", "must be 1 to 63"),
        ("a/b=/a", "must be 1 to 63"),
        ("a=/x,a=/y", "the model name 'a' is given twice"),
        ("/no/such/folder", "'/no/such/folder' is not a folder"),
    ],
)
def test_a_bad_cvae_models_is_refused_saying_what_to_fix(value, says):
    with pytest.raises(ValidationError) as refused:
        Settings(models=value)
    assert "CVAE_MODELS" in str(refused.value) and says in str(refused.value)


def test_a_folder_without_models_or_with_a_bad_name_is_refused(tmp_path):
    with pytest.raises(ValidationError, match=r"no sub-folder of .* holds a manifest\.json"):
        Settings(models=str(tmp_path))
    (tmp_path / "Big Model").mkdir()
    (tmp_path / "Big Model" / "manifest.json").write_text("{}")
    with pytest.raises(ValidationError, match="the model name 'Big Model' must be"):
        Settings(models=str(tmp_path))


def test_python_m_app_exits_2_on_a_bad_cvae_models_and_1_on_a_model_it_cannot_read(monkeypatch, caplog, tmp_path):
    from app.__main__ import main

    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)  # keep pytest's logging as it is
    monkeypatch.setenv("CVAE_MODELS", "digits")
    with caplog.at_level(logging.ERROR):
        assert main(["--port", "0"]) == 2
    assert "CVAE_MODELS" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CVAE_MODELS", f"digits={tmp_path / 'missing'}")
    with caplog.at_level(logging.ERROR):
        assert main(["--port", "0"]) == 1
    assert "cannot serve the model digits" in caplog.text and "missing" in caplog.text


def test_start_up_fails_when_any_model_directory_cannot_be_read(tiny_model_dir, tmp_path):
    settings = Settings(models=f"digits={tiny_model_dir},other={tmp_path / 'nothing'}")
    with pytest.raises(Exception, match="nothing"), TestClient(create_app(settings)):
        pass


# --- one runtime per model, ?model= ------------------------------------------------------------------------------


def test_each_model_has_its_own_runtime_and_inference_process(two, dirs):
    state = two.app.state.service
    assert list(state.models) == ["digits", "fashion"] and state.default == "digits"
    digits, fashion = (state.models[name].runtime for name in ("digits", "fashion"))
    assert digits.card.id == model_id(dirs["digits"]) and fashion.card.id == model_id(dirs["fashion-a"])
    assert digits.engine.pid != fashion.engine.pid and digits.scheduler is not fashion.scheduler
    assert state.runtime is digits
    assert two.get("/readyz").json() == {
        "status": "ready", "model_id": digits.card.id, "models": {"digits": digits.card.id, "fashion": fashion.card.id}
    }  # fmt: skip


def test_in_thread_mode_each_model_has_its_own_engine_too(dirs):
    settings = Settings(models=f"digits={dirs['digits']},fashion={dirs['fashion-a']}", inference_process=False)
    with TestClient(create_app(settings)) as c:
        bag = c.post("/generate?model=fashion", json={"label": "bag"})
        assert bag.headers["x-model-id"] == model_id(dirs["fashion-a"])
        assert c.post("/generate", json={"label": 1}).headers["x-model-id"] == model_id(dirs["digits"])
        assert "cvae_inference_process_" not in c.get("/metrics").text


def test_get_models_lists_each_model_its_id_classes_and_the_default(two, dirs):
    listed = two.get("/models").json()["models"]
    assert [(m["name"], m["id"], m["default"]) for m in listed] == [
        ("digits", model_id(dirs["digits"]), True), ("fashion", model_id(dirs["fashion-a"]), False)
    ]  # fmt: skip
    assert [c["name"] for c in listed[1]["classes"]] == FASHION
    assert listed[0]["classes"] == two.get("/model").json()["classes"]


def test_model_describes_the_model_asked_for_and_names_it_in_x_model_id(two, dirs):
    default = two.get("/model")
    assert default.json()["id"] == default.headers["x-model-id"] == model_id(dirs["digits"])
    fashion = two.get("/model?model=fashion")
    assert fashion.json()["id"] == fashion.headers["x-model-id"] == model_id(dirs["fashion-a"])
    assert [c["name"] for c in fashion.json()["classes"]] == FASHION and fashion.json()["latent_dim"] == 6


@pytest.mark.parametrize("headers", [FAST, ROUTE], ids=["fast path", "route"])
def test_generate_answers_by_the_model_asked_for(two, dirs, headers):
    body = json.dumps({"label": "coat", "n": 2, "seed": 3, "temperature": 0.5})
    r = two.post("/generate?model=fashion", content=body, headers={**headers, "Accept": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-id"] == r.json()["model_id"] == model_id(dirs["fashion-a"])
    assert len(r.json()["latents"][0]) == 6
    digits = two.post("/generate", content=json.dumps({"digit": 3, "n": 2, "seed": 3}), headers=headers)
    assert digits.headers["x-model-id"] == model_id(dirs["digits"])
    named = two.post("/generate?model=digits", content=json.dumps({"digit": 3, "n": 2, "seed": 3}), headers=headers)
    assert named.content == digits.content and named.headers["x-model-id"] == digits.headers["x-model-id"]
    assert problem(two.post("/generate", content=body, headers=headers), 422)  # coat: no class of the digits model


def test_the_fast_path_and_the_route_answer_model_choices_alike(two):
    for query in ("?model=fashion", "?model=digits", "?model=nope", "?model=fashion&x=1", "?x=1", "?model=%66ashion"):
        body = json.dumps({"label": 1, "n": 2, "seed": 4})
        fast = two.post("/generate" + query, content=body, headers=FAST)
        route = two.post("/generate" + query, content=body, headers=ROUTE)
        assert (fast.status_code, fast.content) == (route.status_code, route.content), query
        assert fast.headers.get("x-model-id") == route.headers.get("x-model-id"), query


def test_encode_and_interpolate_answer_by_the_model_asked_for(two, dirs):
    fashion = model_id(dirs["fashion-a"])
    for fields in ({}, {"label": "Sneaker"}):
        r = two.post("/encode?model=fashion", files={"file": ("p.png", encoded(drawing()))}, data=fields)
        assert r.status_code == 200, r.text
        assert r.headers["x-model-id"] == r.json()["model_id"] == fashion and len(r.json()["mean"]) == 6
    body = {"label": "bag", "from": [0.0] * 6, "to": [1.0] * 6, "steps": 3}
    walk = two.post("/interpolate?model=fashion", json=body)
    assert walk.status_code == 200 and walk.headers["x-model-id"] == fashion
    assert problem(two.post("/interpolate", json=body), 422)  # the default model's latent has 4 numbers


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/model"), ("POST", "/generate"), ("POST", "/encode"), ("POST", "/interpolate"), ("GET", "/models")],
)
def test_an_unknown_model_is_a_404_naming_the_models_served(two, method, path):
    kwargs: dict[str, Any] = {}
    if path == "/generate":
        kwargs = {"json": {"digit": 1}}
    elif path == "/encode":
        kwargs = {"files": {"file": ("p.png", encoded(drawing()))}}
    elif path == "/interpolate":
        kwargs = {"json": {"label": 1, "from": [0.0] * 4, "to": [0.0] * 4}}
    r = two.request(method, path + "?model=mnist", **kwargs)
    if path == "/models":  # takes no model: the query is ignored
        assert r.status_code == 200
        return
    body = problem(r, 404)
    assert body["type"].endswith("unknown-model") and "'mnist'" in body["detail"]
    assert "digits, fashion" in body["detail"]


def test_each_model_has_its_own_body_limits(two, dirs):
    runtimes = {name: served.runtime for name, served in two.app.state.service.models.items()}
    small, wide = (runtimes[name].body_limits["/interpolate"] for name in ("digits", "fashion"))
    assert small < wide
    body = json.dumps({"label": 1, "from": [0.5] * 6, "to": [0.25] * 6}).encode()
    padded = body + b" " * (small + 1 - len(body))  # over the default model's limit, within fashion's
    assert problem(two.post("/interpolate", content=padded, headers=FAST), 413)
    assert problem(two.post("/interpolate?model=digits", content=padded, headers=FAST), 413)
    assert two.post("/interpolate?model=fashion", content=padded, headers=FAST).status_code == 200


def test_the_openapi_document_offers_model_on_every_operation_and_lists_models(two):
    doc = two.get("/openapi.json").json()
    for path, method in [("/generate", "post"), ("/encode", "post"), ("/interpolate", "post"), ("/model", "get")]:
        params = {p["name"]: p for p in doc["paths"][path][method].get("parameters", [])}
        assert params["model"]["in"] == "query" and not params["model"].get("required", False), path
        assert "404" in doc["paths"][path][method]["responses"], path
    assert "/models" in doc["paths"]


def test_a_single_model_service_takes_its_own_name_too(client):
    assert client.get("/model?model=digits").json()["id"] == client.get("/model").json()["id"]
    assert [m["name"] for m in client.get("/models").json()["models"]] == ["digits"]
    assert "the models served are digits" in problem(client.get("/model?model=fashion"), 404)["detail"]


# --- metrics ------------------------------------------------------------------------------------------------------


def test_batches_answers_and_model_info_are_labelled_by_model(two, dirs):
    before = metric(two, 'cvae_batch_size_requests_count{model="fashion",operation="generate"}')
    digits_before = metric(two, 'cvae_batch_size_requests_count{model="digits",operation="generate"}')
    assert two.post("/generate?model=fashion", json={"label": 2, "n": 3}).status_code == 200
    assert metric(two, 'cvae_batch_size_requests_count{model="fashion",operation="generate"}') == before + 1
    assert metric(two, 'cvae_batch_size_requests_count{model="digits",operation="generate"}') == digits_before
    assert metric(two, 'cvae_images_generated_total{digit="2",model="fashion"}') >= 3
    fashion = model_id(dirs["fashion-a"])
    assert metric(two, f'cvae_model_answers_total{{model="fashion",model_id="{fashion}",operation="generate"}}') >= 1
    text = two.get("/metrics").text
    info = [line for line in text.splitlines() if line.startswith("cvae_model_info{")]
    assert len(info) == 2 and all('model="digits"' in line or 'model="fashion"' in line for line in info)
    for name in ("digits", "fashion"):
        pid = two.app.state.service.models[name].runtime.engine.pid
        assert metric(two, f'cvae_inference_process_resident_memory_bytes{{model="{name}"}}') > 0
        assert metric(two, f'cvae_inference_process_restarts_total{{model="{name}"}}') == 0, pid
    assert 'model="mnist"' not in two.get("/metrics?model=mnist").text  # a request never makes a label value
    two.post("/generate?model=mnist", json={"digit": 1})
    assert 'model="mnist"' not in two.get("/metrics").text


# --- reloads ------------------------------------------------------------------------------------------------------


def test_admin_reload_reloads_every_model_one_after_another_or_the_one_asked_for(two, dirs):
    fa, fb, digits = model_id(dirs["fashion-a"]), model_id(dirs["fashion-b"]), model_id(dirs["digits"])
    reloaded = {n: metric(two, f'cvae_reloads_total{{model="{n}",outcome="reloaded"}}') for n in ("digits", "fashion")}
    point(dirs, "fashion-b")
    try:
        r = two.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json() == {"outcome": "reloaded", "models": [
            {"model": "digits", "outcome": "reloaded", "model_id": digits, "previous_id": digits},
            {"model": "fashion", "outcome": "reloaded", "model_id": fb, "previous_id": fa},
        ]}  # fmt: skip
        assert two.post("/generate?model=fashion", json={"label": 1}).headers["x-model-id"] == fb
        point(dirs, "fashion-a")
        only = two.post("/admin/reload?model=fashion", headers=ADMIN)
        assert only.json() == {"model": "fashion", "outcome": "reloaded", "model_id": fa, "previous_id": fb}
    finally:
        point(dirs, "fashion-a")
    assert metric(two, 'cvae_reloads_total{model="digits",outcome="reloaded"}') == reloaded["digits"] + 1
    assert metric(two, 'cvae_reloads_total{model="fashion",outcome="reloaded"}') == reloaded["fashion"] + 2
    assert problem(two.post("/admin/reload?model=mnist", headers=ADMIN), 404)["type"].endswith("unknown-model")


def test_a_reload_is_checked_against_each_models_own_card(two, dirs):
    # digits-wide would fit fashion's latent (6) but not its classes; it fits neither of digits' shapes.
    fa, digits = model_id(dirs["fashion-a"]), model_id(dirs["digits"])
    refused = metric(two, 'cvae_reloads_total{model="fashion",outcome="refused"}')
    point(dirs, "digits-wide")
    try:
        body = problem(two.post("/admin/reload", headers=ADMIN), 409)
    finally:
        point(dirs, "fashion-a")
    assert f"fashion: reload refused, model {fa} keeps serving" in body["detail"] and "labels" in body["detail"]
    assert f"digits: reloaded, model {digits} serving" in body["detail"]  # the other one reloaded all the same
    assert metric(two, 'cvae_reloads_total{model="fashion",outcome="refused"}') == refused + 1
    assert two.get("/model?model=fashion").json()["id"] == fa


# --- the Open Inference Protocol --------------------------------------------------------------------------------


def test_the_protocol_serves_each_models_generate_and_encode(two, dirs):
    fashion = model_id(dirs["fashion-a"])
    index = two.post("/v2/repository/index", json={}).json()
    assert [(m["name"], m["state"]) for m in index] == [
        ("digits-generate", "READY"), ("digits-encode", "READY"), ("fashion-generate", "READY"),
        ("fashion-encode", "READY"),
    ]  # fmt: skip
    meta = two.get("/v2/models/fashion-generate").json()
    assert meta["versions"] == [fashion] and meta["inputs"][1]["shape"] == [-1, 6]
    ready = two.get(f"/v2/models/fashion-encode/versions/{fashion}/ready")
    assert ready.json() == {"name": "fashion-encode", "ready": True}
    label = {"name": "label", "datatype": "INT64", "shape": [2], "data": [8, 8]}
    infer = {"inputs": [label], "parameters": {"seed": 1}}
    r = two.post("/v2/models/fashion-generate/infer", json=infer)
    assert r.status_code == 200 and r.headers["x-model-id"] == fashion
    latents = {o["name"]: o for o in r.json()["outputs"]}["latent"]
    assert latents["shape"] == [2, 6]
    missing = two.get("/v2/models/mnist-generate")
    assert missing.status_code == 404 and "digits-generate, digits-encode, fashion-generate, fashion-encode" in (
        missing.json()["error"]
    )  # fmt: skip


def test_the_protocol_loads_a_model_by_its_name_and_unloads_none(two, dirs):
    fashion = model_id(dirs["fashion-a"])
    reloaded = metric(two, 'cvae_reloads_total{model="fashion",outcome="reloaded"}')
    digits_reloaded = metric(two, 'cvae_reloads_total{model="digits",outcome="reloaded"}')
    assert two.post("/v2/repository/models/fashion-encode/load", headers=ADMIN).json() == {}
    assert metric(two, 'cvae_reloads_total{model="fashion",outcome="reloaded"}') == reloaded + 1
    assert metric(two, 'cvae_reloads_total{model="digits",outcome="reloaded"}') == digits_reloaded
    assert two.get("/model?model=fashion").json()["id"] == fashion
    default = two.post("/v2/repository/models/digits-generate/unload", headers=ADMIN)
    assert default.status_code == 409 and "default model" in default.json()["error"]
    other = two.post("/v2/repository/models/fashion-generate/unload", headers=ADMIN)
    assert other.status_code == 409 and "CVAE_MODELS" in other.json()["error"]
