"""The Open Inference Protocol spoken by real clients to `python -m app`: tritonclient's HTTP client (locked in the
dev extra) and kserve's InferenceRESTClient (locked apart, requirements/kserve.txt, and run from its own venv as a
client process: docs/dependencies.md says why). Metadata, readiness, digits-generate and digits-encode with JSON and
binary tensors, errors and the repository index; and a service of two models (CVAE_MODELS), each answering as its own
pair."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def service(settings: dict[str, str]) -> Iterator[int]:
    """`python -m app` with these CVAE_* settings -> its port, once ready."""
    port = free_port()
    env = {**os.environ, **settings, "CVAE_PORT": str(port), "CVAE_ACCESS_LOG": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_ready(port, proc, lambda: proc.stdout.read() if proc.stdout else "")
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def port(tiny_model_dir: Path) -> Iterator[int]:
    with service({"CVAE_MODEL_DIR": str(tiny_model_dir)}) as port:
        yield port


@pytest.fixture(scope="module")
def two_port(tiny_model_dir: Path, fashion_model_dir: Path) -> Iterator[int]:
    """digits (the default) and fashion, a model of other classes."""
    with service({"CVAE_MODELS": f"digits={tiny_model_dir},fashion={fashion_model_dir}"}) as port:
        yield port


def picture() -> bytes:
    img = Image.new("L", (40, 60), 255)
    img.paste(20, (17, 10, 23, 50))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def rest_tiles(port: int, body: dict[str, object], count: int, query: str = "") -> np.ndarray:
    png = httpx.post(f"http://127.0.0.1:{port}/generate{query}", json={**body, "padding": 0}).content
    grid = np.asarray(Image.open(io.BytesIO(png)))
    return grid.reshape(grid.shape[0], count, -1).transpose(1, 0, 2)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_speaks_to_the_service(port: int, binary: bool) -> None:
    http = pytest.importorskip("tritonclient.http")
    utils = pytest.importorskip("tritonclient.utils")
    client = http.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    assert {"binary_tensor_data", "model_repository"} <= set(client.get_server_metadata()["extensions"])
    assert client.is_model_ready("digits-generate")
    meta = client.get_model_metadata("digits-generate")
    assert [i["name"] for i in meta["inputs"]] == ["label", "latent"]
    assert client.is_model_ready("digits-encode", model_version=meta["versions"][0])

    label = http.InferInput("label", [4], "INT64")
    label.set_data_from_numpy(np.full(4, 3, dtype=np.int64), binary_data=binary)
    outputs = [http.InferRequestedOutput("image", binary_data=binary), http.InferRequestedOutput("latent")]
    result = client.infer("digits-generate", [label], outputs=outputs, parameters={"seed": 9})
    images = result.as_numpy("image")
    assert images.shape == (4, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, rest_tiles(port, {"digit": 3, "n": 4, "seed": 9}, 4))

    image = http.InferInput("image", [1], "BYTES")
    data = picture() if binary else base64.b64encode(picture())
    image.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=binary)
    encoded = client.infer("digits-encode", [image])
    answer = httpx.post(f"http://127.0.0.1:{port}/encode", files={"file": ("d.png", picture())}).json()
    assert encoded.as_numpy("label").tolist() == [answer["digit"]]
    assert np.array_equal(encoded.as_numpy("mean")[0], np.asarray(answer["mean"], dtype=np.float32))

    with pytest.raises(utils.InferenceServerException, match="labels are 0-9"):
        wrong = http.InferInput("label", [1], "INT64")
        wrong.set_data_from_numpy(np.array([12], dtype=np.int64), binary_data=binary)
        client.infer("digits-generate", [wrong])
    with pytest.raises(utils.InferenceServerException, match="no model named"):
        client.get_model_metadata("fashion-generate")
    index = client.get_model_repository_index()
    assert {m["name"] for m in index} == {"digits-generate", "digits-encode"}


def kserve_python() -> str:
    """The Python of kserve's client venv (tests/run.sh makes it and exports CVAE_KSERVE_PYTHON). Without it the test
    skips, unless CVAE_REQUIRE_KSERVE=1 (as .ci/run sets it): then it fails."""
    python = os.environ.get("CVAE_KSERVE_PYTHON", "")
    if python and os.access(python, os.X_OK):
        return python
    reason = f"kserve's client venv is missing (CVAE_KSERVE_PYTHON={python!r}; bash tests/run.sh installs it)"
    if os.environ.get("CVAE_REQUIRE_KSERVE") == "1":
        pytest.fail(f"CVAE_REQUIRE_KSERVE=1 but {reason}")
    pytest.skip(reason)


def test_kserve_s_rest_client_speaks_to_the_service(port: int, tmp_path: Path) -> None:
    """kserve's InferenceRESTClient, in its own venv (tests/system/kserve_client.py): health and model readiness,
    digits-generate and digits-encode with JSON and binary tensors (the answers /generate and /encode give), the seed
    a request without one was drawn, and refusals as kserve reports them. (Its REST client has no metadata calls;
    tritonclient's test reads the metadata.)"""
    python = kserve_python()
    digit = tmp_path / "digit.png"
    digit.write_bytes(picture())
    script = ROOT / "tests" / "system" / "kserve_client.py"
    base = f"http://127.0.0.1:{port}"
    run = subprocess.run(
        [python, str(script), base, str(digit)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(run.stdout)

    assert got["live"] is True and got["ready"] is True
    assert got["models_ready"] == {"digits-generate": True, "digits-encode": True, "fashion-generate": False}
    tiles = rest_tiles(port, {"digit": 3, "n": 4, "seed": 9}, 4)
    encoded = httpx.post(f"{base}/encode", files={"file": ("d.png", picture())}).json()
    for way in ("json", "binary"):
        generated = got[f"generate_{way}"]
        image = generated["outputs"]["image"]
        assert (image["datatype"], image["shape"]) == ("UINT8", [4, 28, 28])
        assert np.array_equal(np.asarray(image["data"], dtype=np.uint8).reshape(4, 28, 28), tiles), way
        assert generated["parameters"] == {"seed": 9} and generated["binary"] == (way == "binary")
        assert got[f"encode_{way}"]["binary"] == (way == "binary")
        outputs = got[f"encode_{way}"]["outputs"]
        assert outputs["label"]["data"] == [encoded["label"]]
        assert np.array_equal(np.asarray(outputs["mean"]["data"], dtype=np.float32), np.float32(encoded["mean"]))
        assert outputs["probabilities"]["shape"] == [1, 10]

    unseeded = got["generate_unseeded"]
    seed = unseeded["parameters"]["seed"]
    drawn = np.asarray(unseeded["outputs"]["image"]["data"], dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(drawn, rest_tiles(port, {"digit": 7, "n": 2, "seed": seed}, 2))

    assert got["wrong_label"]["status"] == 400 and "labels are 0-9" in got["wrong_label"]["message"]
    assert got["unknown_model"]["status"] == 404 and "no model named" in got["unknown_model"]["message"]


def test_tritonclient_speaks_to_each_of_two_models(two_port: int) -> None:
    http = pytest.importorskip("tritonclient.http")
    utils = pytest.importorskip("tritonclient.utils")
    client = http.InferenceServerClient(f"127.0.0.1:{two_port}")
    assert client.is_server_ready()
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [
        ("digits-generate", "READY"), ("digits-encode", "READY"), ("fashion-generate", "READY"),
        ("fashion-encode", "READY"),
    ]  # fmt: skip
    fashion_id = httpx.get(f"http://127.0.0.1:{two_port}/model?model=fashion").json()["id"]
    assert client.get_model_metadata("fashion-generate")["versions"] == [fashion_id]
    assert client.is_model_ready("fashion-encode", model_version=fashion_id)

    for name, query in (("fashion", "?model=fashion"), ("digits", "")):
        label = http.InferInput("label", [3], "INT64")
        label.set_data_from_numpy(np.full(3, 4, dtype=np.int64), binary_data=True)
        result = client.infer(f"{name}-generate", [label], parameters={"seed": 11})
        model_id = httpx.get(f"http://127.0.0.1:{two_port}/model{query}").json()["id"]
        assert result.get_response()["model_version"] == model_id
        tiles = rest_tiles(two_port, {"label": 4, "n": 3, "seed": 11}, 3, query)
        assert np.array_equal(result.as_numpy("image"), tiles)

    image = http.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([picture()], dtype=np.object_), binary_data=True)
    encoded = client.infer("fashion-encode", [image])
    answer = httpx.post(f"http://127.0.0.1:{two_port}/encode?model=fashion", files={"file": ("d.png", picture())})
    assert encoded.as_numpy("label").tolist() == [answer.json()["label"]]
    assert np.array_equal(encoded.as_numpy("mean")[0], np.asarray(answer.json()["mean"], dtype=np.float32))
    with pytest.raises(utils.InferenceServerException, match="fashion-generate, fashion-encode"):
        client.get_model_metadata("mnist-generate")
