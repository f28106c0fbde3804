"""Shared fixtures and helpers: a tiny random-weight model exported into a temporary model directory, the one
service client the app tests share, and the helpers they use to build requests and read answers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.factory import create_app
from app.settings import Settings
from model.manifest import Preprocessing
from model.network import CVAE, CVAEConfig
from model.prior import GaussianPrior, Prior
from training.data import FASHION as FASHION_KIND
from training.export import export_model_dir

# The user's own environment must not reach the tests: an exported setting (CVAE_MAX_BATCH=1, say) would change what
# every Settings() and every `python -m app` the tests start is configured with, OTEL_* would turn traces on, and a
# proxy would take the loopback requests of httpx, Selenium and the CLI tools elsewhere. The variables that steer
# the suite itself (CVAE_REQUIRE_*, CVAE_PAGE_SCREENSHOT, CVAE_DASHBOARD_PICTURE, CVAE_KSERVE_PYTHON) are not settings
# and stay.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def isolated_environment(environ: dict[str, str]) -> dict[str, str]:
    """environ without the service's settings, OpenTelemetry's variables and proxies."""
    settings = {"CVAE_" + name.upper() for name in Settings.model_fields}
    return {
        k: v
        for k, v in environ.items()
        if k.upper() not in settings and not k.startswith("OTEL_") and k not in PROXY_VARIABLES
    }


def pytest_configure(config: pytest.Config) -> None:
    kept = isolated_environment(dict(os.environ))
    for name in set(os.environ) - set(kept):
        del os.environ[name]


TINY = CVAEConfig(latent_dim=4, hidden=(32,), channels=(4, 8), encoder="conv")
D = TINY.latent_dim
TILE = 28  # the side of a tile, in pixels
MAX_UPLOAD_BYTES = 100_000  # the shared client's limits: small enough for tests to cross cheaply
MAX_IMAGE_PIXELS = 1_000_000


def make_model_dir(
    out: Path,
    cfg: CVAEConfig = TINY,
    seed: int = 0,
    temperature: float = 1.0,
    prior: Prior | None = None,
    programs: bool = False,
    labels: list[str] | None = None,
    preprocessing: Preprocessing = "mnist",
) -> Path:
    """A model directory of random weights; its prior N(0, I) for every digit unless `prior` is given. programs: with
    the torch.export programs (seconds to write each time), else TorchScript only, as directories written before.
    labels: the class names the manifest gives (default "0".."9"); preprocessing: the one its uploads get."""
    torch.manual_seed(seed)
    model = CVAE(cfg).eval()
    export_model_dir(
        model,
        prior if prior is not None else GaussianPrior.standard(cfg.num_classes, cfg.latent_dim),
        out,
        data={"name": "none (random weights)", "count": 0, "files": {}},
        config={"model": cfg.to_dict()},
        metrics={},
        reproduce="tests/conftest.py: make_model_dir",
        temperature=temperature,
        programs=programs,
        labels=labels,
        preprocessing=preprocessing,
    )
    return out


def set_manifest(model_dir: Path, **fields: Any) -> Path:
    """Rewrite fields of model_dir's manifest.json (a None leaves a field as it is); the manifest is not among the
    checksummed artifacts, so the directory stays valid if the values are."""
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update({k: v for k, v in fields.items() if v is not None})
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return model_dir


# Fashion-MNIST's classes, by class number (training's): a model directory whose classes are not digits.
FASHION = list(FASHION_KIND.classes)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (random weights, latent_dim 4, both formats) shared by the whole session; do not modify it."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny", programs=True)


@pytest.fixture(scope="session")
def fashion_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (random weights) whose classes are FASHION's and whose uploads are framed; do not modify
    it."""
    out = tmp_path_factory.mktemp("models") / "fashion"
    return make_model_dir(out, labels=FASHION, preprocessing="frame")


@pytest.fixture(scope="session")
def fashion_client(fashion_model_dir: Path) -> Iterator[TestClient]:
    """The service serving the fashion model, shared by the tests of a model whose classes are not digits."""
    settings = Settings(
        model_dir=fashion_model_dir, max_upload_bytes=MAX_UPLOAD_BYTES, max_image_pixels=MAX_IMAGE_PIXELS
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The service (default settings but the limits above) serving the tiny model, shared by every app test.
    A test that changes its state puts it back; one that needs other settings starts its own app."""
    settings = Settings(model_dir=tiny_model_dir, max_upload_bytes=MAX_UPLOAD_BYTES, max_image_pixels=MAX_IMAGE_PIXELS)
    with TestClient(create_app(settings)) as c:
        yield c


# --- reading answers ------------------------------------------------------------------------------------------


def problem(r: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 problem body of response r, checked: its status, media type and members."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


def pixels(png: bytes) -> np.ndarray:
    """An 8-bit greyscale PNG's pixels, checked to be one."""
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "L"
    return np.asarray(img)


def grid_size(rows: int, columns: int, padding: int = 2, scale: int = 1) -> tuple[int, int]:
    """-> (width, height) of a /generate grid."""
    return (columns * (TILE + padding) + padding) * scale, (rows * (TILE + padding) + padding) * scale


def metric(c: TestClient, series: str) -> float:
    """The value of one series in /metrics, e.g. 'cvae_batch_size_requests_count{operation="encode"}'."""
    for line in c.get("/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not exposed")


# --- making uploads -------------------------------------------------------------------------------------------


def drawing(size: tuple[int, int] = (60, 90), mode: str = "L") -> Image.Image:
    """A dark stroke (a '1' with a foot) on white paper, like a photo or scan of a handwritten digit."""
    img = Image.new("L", size, 255)
    w, h = size
    img.paste(20, (w // 2 - 3, h // 6, w // 2 + 3, h - h // 6))
    img.paste(20, (w // 3, h - h // 6, 2 * w // 3, h - h // 6 + 1))
    return img.convert(mode)


def encoded(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def upload(c: TestClient, data: bytes, digit: str | None = None, name: str = "digit.png") -> Any:
    """POST /encode with `data` as the file field (and `digit` as a form field, when given)."""
    return c.post("/encode", files={"file": (name, data, "application/octet-stream")},
                  data={} if digit is None else {"digit": digit})  # fmt: skip


# --- processes ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen[Any], output: Callable[[], str], timeout_s: float = 60.0) -> None:
    """Until the server `proc` answers GET /readyz on `port` with 200; fails with output() if it exits first, and
    after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{output()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, f"server not ready after {timeout_s:g} s"
        time.sleep(0.1)


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
