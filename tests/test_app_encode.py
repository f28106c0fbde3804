"""POST /encode: any picture Pillow reads -> digit, probabilities and the latent posterior; bad uploads."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.factory import create_app
from app.settings import Settings
from model.artifacts import load_model_dir
from model.imaging import decode_image, to_mnist, to_uint8
from model.inference import label_log_probs
from tests.conftest import problem

D = 4


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, max_image_pixels=1_000_000))) as c:
        yield c


def drawing(size: tuple[int, int] = (60, 90), mode: str = "L") -> Image.Image:
    """A dark stroke (a '1' with a foot) on white paper, like a photo or scan of a handwritten digit."""
    img = Image.new("L", size, 255)
    w, h = size
    for y in range(h // 6, h - h // 6):
        for x in range(w // 2 - 3, w // 2 + 3):
            img.putpixel((x, y), 20)
    for x in range(w // 3, 2 * w // 3):
        img.putpixel((x, h - h // 6), 20)
    return img.convert(mode)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def upload(client, data: bytes, digit: str | None = None, name: str = "digit.png"):
    return client.post("/encode", files={"file": (name, data, "application/octet-stream")},
                       data={} if digit is None else {"digit": digit})  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "mode", "kw"),
    [
        ("PNG", "L", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "I;16", {}),
        ("PNG", "1", {}),
        ("JPEG", "RGB", {"quality": 90}),
        ("BMP", "RGB", {}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {}),
        ("TIFF", "L", {}),
    ],
)
def test_encode_accepts_any_format_and_mode_pillow_reads(client, fmt, mode, kw):
    r = upload(client, encoded(drawing(mode=mode), fmt, **kw))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["mean"]) == D and len(body["log_var"]) == D
    assert body["model_id"].startswith("cvae-")


def test_encode_infers_the_digit_with_probabilities_for_all_ten(client, tiny_model_dir):
    data = encoded(drawing((300, 400)), "PNG")
    body = upload(client, data).json()
    assert body["inferred"] is True
    p = body["probabilities"]
    assert len(p) == 10 and abs(sum(p) - 1) < 1e-5
    assert body["digit"] == int(np.argmax(p))
    # The same numbers as the model package computes for the same preprocessing.
    model = load_model_dir(tiny_model_dir)
    with torch.inference_mode():
        x = to_mnist(decode_image(data, 10**7))[None]
        log_probs, mean, log_var = label_log_probs(model.encoder, model.decoder, model.prior, x)
    assert np.allclose(p, log_probs[0].exp().numpy(), atol=1e-6)
    assert np.allclose(body["mean"], mean[0, body["digit"]].numpy(), atol=1e-6)
    assert np.allclose(body["log_var"], log_var[0, body["digit"]].numpy(), atol=1e-6)


def test_encode_with_a_given_digit_reports_that_digit_without_inferring(client):
    body = upload(client, encoded(drawing(), "PNG"), digit="7").json()
    assert body["digit"] == 7 and body["inferred"] is False and body["probabilities"] is None
    assert len(body["mean"]) == D


def test_encode_mean_fed_back_to_generate_decodes_the_posterior_mean(client, tiny_model_dir):
    data = encoded(drawing(), "PNG")
    enc = upload(client, data, digit="1").json()
    r = client.post("/generate", json={"digit": 1, "n": 1, "latent": enc["mean"], "padding": 0})
    assert r.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    model = load_model_dir(tiny_model_dir)
    with torch.inference_mode():
        x = to_mnist(decode_image(data, 10**7))[None]
        mean, _ = model.encoder(x, torch.tensor([1]))
        expected = to_uint8(model.decoder(mean, torch.tensor([1])))[0, 0].numpy()
    assert got.shape == (28, 28)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_encode_either_polarity_gives_the_same_answer(client):
    img = drawing()
    dark_on_light = upload(client, encoded(img, "PNG"), digit="1").json()
    light_on_dark = upload(client, encoded(Image.eval(img, lambda v: 255 - v), "PNG"), digit="1").json()
    assert np.allclose(dark_on_light["mean"], light_on_dark["mean"], atol=1e-5)


# --- bad uploads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello, this is text", b"%PDF-1.4\n" + bytes(200)])
def test_encode_refuses_what_is_not_an_image_with_415(client, data):
    assert "Pillow" in problem(upload(client, data, name="x.txt"), 415)["detail"]


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_encode_refuses_a_truncated_image_with_400(client, keep):
    data = encoded(drawing((200, 200)), "PNG", compress_level=0)
    problem(upload(client, data[: int(len(data) * keep)]), 400)


def test_encode_refuses_a_truncated_jpeg_with_a_client_error(client):
    data = encoded(drawing((200, 200), "RGB"), "JPEG")
    r = upload(client, data[: len(data) // 2])
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("colour", [0, 128, 255])
def test_encode_refuses_an_image_without_ink_with_422(client, colour):
    p = problem(upload(client, encoded(Image.new("L", (40, 40), colour), "PNG")), 422)
    assert "ink" in p["detail"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions and carries a few bytes of pixel data: a decompression bomb's header."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_encode_refuses_huge_pixel_dimensions_before_decoding_with_413(client):
    p = problem(upload(client, _png_header_only(50_000, 50_000)), 413)
    assert "pixels" in p["detail"]


def test_encode_limit_on_pixels_is_the_setting(client):
    problem(upload(client, encoded(drawing((1001, 1000)), "PNG")), 413)  # max_image_pixels = 1,000,000
    assert upload(client, encoded(drawing((1000, 1000)), "PNG")).status_code == 200


def test_encode_without_a_file_field_is_422_naming_it(client):
    r = client.post("/encode", data={"digit": "3"})
    assert ["body", "file"] in [e["loc"] for e in problem(r, 422)["errors"]]


def test_encode_with_a_json_body_is_422(client):
    problem(client.post("/encode", json={"file": "abc"}), 422)


@pytest.mark.parametrize("digit", ["10", "-1", "three", "3.5"])
def test_encode_rejects_a_bad_digit_with_422_naming_it(client, digit):
    r = upload(client, encoded(drawing(), "PNG"), digit=digit)
    assert ["body", "digit"] in [e["loc"] for e in problem(r, 422)["errors"]]
