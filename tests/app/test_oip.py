"""The Open Inference Protocol (/v2, app/oip/): metadata and readiness, digits-generate and digits-encode with JSON and
binary tensors, the same answers /generate and /encode give, output selection, errors as the protocol has them, and
hostile requests refused with a 4xx."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from tests.conftest import TILE, D, drawing, encoded, pixels, upload

GEN = "/v2/models/digits-generate"
ENC = "/v2/models/digits-encode"
KEY = "k" * 20


def tensor(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def binary_body(head: dict[str, Any], *sections: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(head).encode()
    return header + b"".join(sections), {"Inference-Header-Content-Length": str(len(header))}


def outputs_of(r: Any) -> dict[str, np.ndarray]:
    """A 200 infer answer's outputs, JSON or binary, as arrays of their shapes."""
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    head = json.loads(r.content if length is None else r.content[: int(length)])
    at, out = int(length or 0), {}
    dtypes = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}
    for o in head["outputs"]:
        if "data" in o:
            out[o["name"]] = np.asarray(o["data"], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
        else:
            size = o["parameters"]["binary_data_size"]
            raw = r.content[at : at + size]
            at += size
            out[o["name"]] = np.frombuffer(raw, dtype=dtypes[o["datatype"]]).reshape(o["shape"])
    return out


def error(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


def tiles_of(png: bytes, count: int, padding: int = 2) -> np.ndarray:
    """The tiles of a one-row /generate grid."""
    grid = pixels(png)
    step = TILE + padding
    return np.stack([grid[padding : padding + TILE, padding + i * step : i * step + step] for i in range(count)])


def test_server_metadata_health_and_model_metadata(client: TestClient) -> None:
    server = client.get("/v2").json()
    assert server["name"] == "cvae-digits" and {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    model_id = client.get("/model").json()["id"]
    meta = client.get(GEN).json()
    assert meta["name"] == "digits-generate" and meta["versions"] == [model_id]
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("label", "INT64", [-1]), ("latent", "FP32", [-1, D])]  # fmt: skip
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("image", [-1, TILE, TILE]), ("latent", [-1, D])]
    enc = client.get(f"{ENC}/versions/{model_id}").json()
    assert [o["name"] for o in enc["outputs"]] == ["label", "probabilities", "mean", "log_var"]
    assert client.get(f"{GEN}/ready").json()["ready"] is True
    assert client.get(f"{ENC}/versions/{model_id}/ready").status_code == 200


def test_unknown_models_and_versions_are_404_as_the_protocol_has_them(client: TestClient) -> None:
    assert "digits-generate" in error(client.get("/v2/models/fashion-generate"), 404)
    error(client.get("/v2/models/digits-interpolate/ready"), 404)
    error(client.post(f"{GEN}/versions/cvae-000/infer", json={}), 404)
    error(client.get("/v2/nothing/here"), 404)


def test_generate_draws_what_generate_draws_for_the_same_seed(client: TestClient) -> None:
    body = {"inputs": [tensor("label", "INT64", [3] * 4)], "parameters": {"seed": 11, "temperature": 0.7}}
    out = outputs_of(client.post(f"{GEN}/infer", json=body))
    assert out["image"].shape == (4, TILE, TILE) and out["latent"].shape == (4, D)
    rest = client.post("/generate", json={"digit": 3, "n": 4, "seed": 11, "temperature": 0.7},
                       headers={"Accept": "application/json"}).json()  # fmt: skip
    assert np.array_equal(out["image"], tiles_of(base64.b64decode(rest["png_base64"]), 4))
    assert np.array_equal(out["latent"], np.asarray(rest["latents"], dtype=np.float32))
    again = outputs_of(client.post(f"{GEN}/infer", json=body))
    assert np.array_equal(again["image"], out["image"])


def test_generate_reports_the_seed_it_drew_and_that_seed_draws_the_same_again(client: TestClient) -> None:
    """As /generate's X-Seed: the seed used, drawn or given, is in the answer's parameters (binary answers too); with
    latents given there is none."""
    drawn = client.post(f"{GEN}/infer", json={"inputs": [tensor("label", "INT64", [6, 6])]})
    seed = drawn.json()["parameters"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    rest = client.post("/generate", json={"digit": 6, "n": 2}, headers={"Accept": "application/json"})
    assert rest.json()["seed"] == int(rest.headers["x-seed"])  # what the protocol's parameter matches
    again = client.post(f"{GEN}/infer", json={"inputs": [tensor("label", "INT64", [6, 6])], "parameters": {
        "seed": seed, "binary_data_output": True}})  # fmt: skip
    assert np.array_equal(outputs_of(again)["image"], outputs_of(drawn)["image"])
    length = int(again.headers["inference-header-content-length"])
    assert json.loads(again.content[:length])["parameters"] == {"seed": seed}
    given = client.post(f"{GEN}/infer", json={
        "inputs": [tensor("label", "INT64", [6]), tensor("latent", "FP32", [[0.0] * D], [1, D])]})  # fmt: skip
    assert "parameters" not in given.json()


def test_generate_with_mixed_labels_draws_generate_s_digit_list(client: TestClient) -> None:
    out = outputs_of(client.post(f"{GEN}/infer", json={
        "inputs": [tensor("label", "INT64", [1, 7, 2])], "parameters": {"seed": 4}}))  # fmt: skip
    png = client.post("/generate", json={"digit": [1, 7, 2], "n": 1, "seed": 4, "columns": 3}).content
    assert np.array_equal(out["image"], tiles_of(png, 3))


def test_a_given_latent_gives_exactly_the_pixels_generate_draws_for_it(client: TestClient) -> None:
    rows = [[0.5, -1.0, 0.25, 2.0], [0.0, 0.0, 0.0, 0.0], [-1.5, 1.0, 0.5, -0.25]]
    labels = [2, 9, 2]
    out = outputs_of(client.post(f"{GEN}/infer", json={
        "inputs": [tensor("label", "INT64", labels), tensor("latent", "FP32", rows, [3, D])]}))  # fmt: skip
    for i, (label, row) in enumerate(zip(labels, rows, strict=True)):
        png = client.post("/generate", json={"digit": label, "latent": row, "n": 1}).content
        assert np.array_equal(out["image"][i], tiles_of(png, 1)[0])
    assert np.array_equal(out["latent"], np.asarray(rows, dtype=np.float32))


def test_binary_tensors_each_way_give_what_json_gives(client: TestClient) -> None:
    labels = [5, 5, 5]
    json_out = outputs_of(client.post(f"{GEN}/infer", json={
        "inputs": [tensor("label", "INT64", labels)], "parameters": {"seed": 3}}))  # fmt: skip
    body, headers = binary_body({
        "inputs": [{"name": "label", "datatype": "INT64", "shape": [3], "parameters": {"binary_data_size": 24}}],
        "parameters": {"seed": 3, "binary_data_output": True},
    }, struct.pack("<3q", *labels))  # fmt: skip
    r = client.post(f"{GEN}/infer", content=body, headers=headers)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-model-id"] == client.get("/model").json()["id"]
    out = outputs_of(r)
    assert np.array_equal(out["image"], json_out["image"]) and np.array_equal(out["latent"], json_out["latent"])


def test_outputs_select_what_comes_back_and_how(client: TestClient) -> None:
    r = client.post(f"{GEN}/infer", json={
        "id": "req-1", "inputs": [tensor("label", "INT64", [0])], "parameters": {"seed": 1},
        "outputs": [{"name": "latent", "parameters": {"binary_data": True}}]})  # fmt: skip
    head = json.loads(r.content[: int(r.headers["inference-header-content-length"])])
    assert head["id"] == "req-1" and [o["name"] for o in head["outputs"]] == ["latent"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 4 * D
    assert "unknown output" in error(client.post(f"{GEN}/infer", json={
        "inputs": [tensor("label", "INT64", [0])], "outputs": [{"name": "png"}]}), 400)  # fmt: skip


def test_encode_gives_the_answers_encode_gives_as_json_and_binary(client: TestClient) -> None:
    pictures = [encoded(drawing()), encoded(drawing((40, 40)), "JPEG")]
    rest = [upload(client, p).json() for p in pictures]
    as_json = outputs_of(client.post(f"{ENC}/infer", json={"inputs": [
        tensor("image", "BYTES", [base64.b64encode(p).decode() for p in pictures])]}))  # fmt: skip
    sections = b"".join(struct.pack("<I", len(p)) + p for p in pictures)
    body, headers = binary_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                             "parameters": {"binary_data_size": len(sections)}}],
                                 "parameters": {"binary_data_output": True}}, sections)  # fmt: skip
    as_binary = outputs_of(client.post(f"{ENC}/infer", content=body, headers=headers))
    for out in (as_json, as_binary):
        assert out["label"].tolist() == [a["digit"] for a in rest]
        for name, key in (("probabilities", "probabilities"), ("mean", "mean"), ("log_var", "log_var")):
            assert np.array_equal(out[name], np.asarray([a[key] for a in rest], dtype=np.float32))


def test_encode_with_labels_gives_no_probabilities(client: TestClient) -> None:
    picture = base64.b64encode(encoded(drawing())).decode()
    rest = upload(client, encoded(drawing()), digit="4").json()
    out = outputs_of(client.post(f"{ENC}/infer", json={"inputs": [
        tensor("image", "BYTES", [picture]), tensor("label", "INT64", [4])]}))  # fmt: skip
    assert set(out) == {"label", "mean", "log_var"} and out["label"].tolist() == [4]
    assert np.array_equal(out["mean"][0], np.asarray(rest["mean"], dtype=np.float32))
    assert "read from the pictures" in error(client.post(f"{ENC}/infer", json={
        "inputs": [tensor("image", "BYTES", [picture]), tensor("label", "INT64", [4])],
        "outputs": [{"name": "probabilities"}]}), 400)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        (GEN, {"inputs": [tensor("digit", "INT64", [1])]}, "unknown input"),
        (GEN, {"inputs": [tensor("label", "FP32", [1.0])]}, "must be INT64"),
        (GEN, {"inputs": [tensor("label", "INT64", [1, 2], [1, 2])]}, "shape"),
        (GEN, {"inputs": [tensor("label", "INT64", [10])]}, "labels are 0-9"),
        (GEN, {"inputs": [tensor("label", "INT64", [1, 2], [3])]}, "elements"),
        (
            GEN,
            {
                "inputs": [tensor("label", "INT64", [1]), tensor("latent", "FP32", [0.0] * D, [1, D])],
                "parameters": {"seed": 1},
            },
            "sampled latents only",
        ),
        (GEN, {"inputs": [tensor("label", "INT64", [1, 2]), tensor("latent", "FP32", [0.0] * D, [1, D])]}, "rows"),
        (GEN, {"inputs": [tensor("label", "INT64", [1])], "parameters": {"seed": -1}}, "seed"),
        (GEN, {"inputs": [tensor("label", "INT64", [1])], "parameters": {"temperature": "hot"}}, "temperature"),
        (GEN, {"inputs": []}, "inputs"),
        (ENC, {"inputs": [tensor("label", "INT64", [1])]}, "'image' is missing"),
        (ENC, {"inputs": [tensor("image", "BYTES", ["not base64!"])]}, "base64"),
        (ENC, {"inputs": [tensor("image", "BYTES", [base64.b64encode(b"plain text").decode()])]}, "image"),
    ],
)
def test_wrong_requests_are_400_with_the_protocol_s_error(client: TestClient, path: str, body: Any, says: str) -> None:
    assert says in error(client.post(f"{path}/infer", json=body), 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",  # malformed
        b'{"inputs": [], "inputs": []}',  # a key twice
        b'{"inputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [NaN]}]}',
        b'{"inputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}]}",  # nested JSON
        json.dumps({"inputs": [tensor("label", "INT64", [1], [1_000_000])]}).encode(),  # a million labels, said
        json.dumps({"inputs": [tensor("label", "INT64", [1] * 20_000)]}).encode(),  # many labels, sent
    ],
    ids=["malformed", "repeated-key", "nan", "nested", "million-shape", "many-labels"],
)
def test_hostile_json_is_a_4xx(client: TestClient, raw: bytes) -> None:
    r = client.post(f"{GEN}/infer", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 413), r.text
    error(r, r.status_code)


def test_binary_sections_that_lie_are_400(client: TestClient) -> None:
    lying = [
        ({"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}},
         struct.pack("<I", 1_000_000) + b"abcd", ENC),
        ({"name": "label", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 8}},
         struct.pack("<q", 1), GEN),
        ({"name": "label", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 800}},
         struct.pack("<q", 1), GEN),
    ]  # fmt: skip
    for described, section, path in lying:
        body, headers = binary_body({"inputs": [described]}, section)
        error(client.post(f"{path}/infer", content=body, headers=headers), 400)
    body, _ = binary_body({"inputs": [tensor("label", "INT64", [1])]})
    for length in ("99999", "-1", "x"):
        error(client.post(f"{GEN}/infer", content=body, headers={"Inference-Header-Content-Length": length}), 400)


def test_a_body_over_the_limit_is_413_as_the_protocol_has_it(client: TestClient) -> None:
    error(client.post(f"{ENC}/infer", content=b"x" * 200_000), 413)


def test_v2_requests_are_counted_under_their_templates(client: TestClient) -> None:
    client.post(f"{GEN}/infer", json={"inputs": [tensor("label", "INT64", [1])], "parameters": {"seed": 1}})
    text = client.get("/metrics").text
    assert 'route="/v2/models/{model}/infer",status="200"' in text
    assert "digits-generate" not in text


def test_repository_index_lists_both_models_and_load_needs_admin_keys(client: TestClient) -> None:
    index = client.post("/v2/repository/index").json()
    assert {(m["name"], m["state"]) for m in index} == {("digits-generate", "READY"), ("digits-encode", "READY")}
    assert client.post("/v2/repository/index", json={"ready": True}).json() == index
    error(client.post("/v2/repository/models/digits-generate/load"), 404)  # no admin keys: no such path
    error(client.post("/v2/repository/index", content=b"[1]"), 400)


def test_keys_and_rate_limits_apply_to_the_protocol(tiny_model_dir: Any) -> None:
    settings = Settings(model_dir=tiny_model_dir, api_keys=KEY, admin_api_keys=KEY + "a", rate_limit=0.001,
                        rate_burst=1, inference_process=False)  # fmt: skip
    body = {"inputs": [tensor("label", "INT64", [1])], "parameters": {"seed": 1}}
    with TestClient(create_app(settings)) as c:
        assert c.get("/v2/health/ready").status_code == 200  # probes stay open
        r = c.post(f"{GEN}/infer", json=body)
        error(r, 401)
        assert "www-authenticate" in r.headers
        error(c.get(GEN), 401)
        error(c.post("/v2/repository/index"), 401)
        auth = {"Authorization": f"Bearer {KEY}"}
        assert c.post(f"{GEN}/infer", json=body, headers=auth).status_code == 200
        r = c.post(f"{GEN}/infer", json=body, headers=auth)
        error(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        error(c.post("/v2/repository/models/digits-encode/unload", headers=auth), 401)  # an API key is no admin key
        admin = {"Authorization": f"Bearer {KEY}a"}
        assert "cannot be unloaded" in error(c.post("/v2/repository/models/digits-encode/unload", headers=admin), 409)
        error(c.post("/v2/repository/models/fashion-encode/load", headers=admin), 404)


@pytest.mark.slow
def test_load_reloads_the_model_directory_without_losing_requests(tiny_model_dir: Any) -> None:
    settings = Settings(model_dir=tiny_model_dir, admin_api_keys=KEY)
    with TestClient(create_app(settings)) as c:
        before = c.get("/model").json()["id"]
        r = c.post("/v2/repository/models/digits-generate/load", headers={"X-API-Key": KEY})
        assert r.status_code == 200, r.text
        assert c.get(GEN).json()["versions"] == [before]  # the same directory, a fresh inference process
        assert c.post(f"{GEN}/infer", json={"inputs": [tensor("label", "INT64", [1])]}).status_code == 200
