"""POST /encode: any picture Pillow reads -> digit, probabilities and the latent posterior; bad uploads."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.factory import create_app
from app.operations.encode import EncodeResponse
from app.settings import Settings
from model.artifacts import load_model_dir
from model.imaging import decode_image, to_mnist
from model.inference import label_log_probs
from model.network import CVAEConfig
from model.pictures import to_uint8
from tests.conftest import D, drawing, encoded, make_model_dir, metric, problem, upload


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
    body = EncodeResponse.model_validate_json(r.content).model_dump()  # the documented shape, no more
    assert body == r.json()
    assert len(body["mean"]) == D and len(body["log_var"]) == D
    assert body["model_id"].startswith("cvae-")


def test_encode_infers_the_digit_with_probabilities_for_all_ten(client, tiny_model_dir):
    data = encoded(drawing((300, 400)), "PNG")
    body = upload(client, data).json()
    assert body["inferred"] is True
    p = body["probabilities"]
    assert len(p) == 10 and abs(sum(p) - 1) < 1e-5
    assert body["digit"] == int(np.argmax(p))
    # The same numbers as the model package computes for the same preprocessing, scored as the service scores a lone
    # upload: among blank images, with the kernels a batch of uploads takes (app/inference/worker.py, SCORE_MIN_ROWS).
    from app.inference.worker import SCORE_MIN_ROWS

    model = load_model_dir(tiny_model_dir)
    with torch.inference_mode():
        x = to_mnist(decode_image(data, 10**7))[None]
        x = torch.cat([x, torch.zeros(SCORE_MIN_ROWS - 1, *x.shape[1:])])
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
    problem(upload(client, encoded(drawing((1001, 1000)), "PNG")), 413)  # MAX_IMAGE_PIXELS = 1,000,000
    assert upload(client, encoded(drawing((1000, 1000)), "PNG")).status_code == 200


def test_uploads_refused_from_their_header_never_reach_the_model(client):
    series = 'cvae_batch_size_requests_count{model="digits",operation="encode"}'
    before = metric(client, series)
    problem(upload(client, _png_header_only(50_000, 50_000)), 413)
    problem(upload(client, b"hello, this is text"), 415)
    assert metric(client, series) == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_encode_refuses_a_float_image_with_non_finite_pixels_with_422(client, bad):
    a = np.ones((40, 30), dtype=np.float32)
    a[5:35, 12:18] = 0.0
    a[0, 0] = bad
    p = problem(upload(client, encoded(Image.fromarray(a, mode="F"), "TIFF"), name="d.tiff"), 422)
    assert "finite" in p["detail"] and p["type"].endswith("non-finite-image")


def test_encode_reads_a_phone_photo_upright(client):
    """A photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view), as phones store them:
    encoded as the upright picture, not as stored."""
    upright = drawing((60, 90), "RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6

    def mean(data: bytes) -> np.ndarray:
        return np.array(upload(client, data, digit="1").json()["mean"])

    plain = mean(encoded(upright, "JPEG", quality=95))
    photo = mean(encoded(stored, "JPEG", quality=95, exif=exif))
    as_stored = mean(encoded(stored, "JPEG", quality=95))  # what reading it as stored gives (the tiny model's
    # encoder moves little: compare the distances, not against a fixed tolerance)
    assert np.abs(photo - plain).max() < np.abs(as_stored - plain).max() / 10


def test_encode_without_a_file_field_is_422_naming_it(client):
    r = client.post("/encode", files={"digit": (None, "3")})  # multipart, without a file
    assert ["body", "file"] in [e["loc"] for e in problem(r, 422)["errors"]]


@pytest.mark.parametrize(
    "kw",
    [{"json": {"file": "abc"}}, {"data": {"digit": "3"}},
     {"content": b"\x89PNG", "headers": {"Content-Type": "image/png"}}, {"content": b"x"}],
    ids=["json", "urlencoded", "image", "none"],
)  # fmt: skip
def test_encode_with_a_body_that_is_not_multipart_is_415(client, kw):
    assert "multipart/form-data" in problem(client.post("/encode", **kw), 415)["detail"]


@pytest.mark.parametrize("digit", ["10", "-1", "three", "3.5"])
def test_encode_rejects_a_bad_digit_with_422_naming_it(client, digit):
    r = upload(client, encoded(drawing(), "PNG"), digit=digit)
    assert ["body", "digit"] in [e["loc"] for e in problem(r, 422)["errors"]]


# --- batching -------------------------------------------------------------------------------------------------


def _uploads() -> list[tuple[bytes, str | None]]:
    """Uploads of several sizes and formats, with and without a digit, and two that fail differently."""
    good = [(encoded(drawing((40 + 7 * i, 60 + 5 * i)), "PNG"), None if i % 3 else str(i % 10)) for i in range(10)]
    bad = [(b"not an image", None), (encoded(Image.new("L", (30, 30), 255), "PNG"), None)]
    return good[:4] + bad[:1] + good[4:8] + bad[1:] + good[8:]


@pytest.mark.parametrize("inference_process", [True, False])
def test_concurrent_uploads_share_batches_and_each_gets_what_it_gets_alone(tiny_model_dir, inference_process):
    """Batched with others or not, an upload's answer is byte for byte the same; a bad upload fails only itself."""
    uploads = _uploads()
    settings = Settings(model_dir=tiny_model_dir, max_wait_ms=50, inference_process=inference_process)
    with TestClient(create_app(settings)) as c:
        alone = [upload(c, data, digit) for data, digit in uploads]
        batches_before = metric(c, 'cvae_batch_size_requests_count{model="digits",operation="encode"}')
        with ThreadPoolExecutor(len(uploads)) as pool:
            together = list(pool.map(lambda u: upload(c, *u), uploads))
        batches = metric(c, 'cvae_batch_size_requests_count{model="digits",operation="encode"}') - batches_before
    assert [r.status_code for r in alone] == [200] * 4 + [415] + [200] * 4 + [422] + [200] * 2
    assert [(r.status_code, r.content) for r in together] == [(r.status_code, r.content) for r in alone]
    assert batches < len(uploads)  # some uploads did share a batch


class RowwiseEncoder:
    """A stand-in encoder: each row's numbers a function of that row alone, plus `shape_error` times the rows in
    the pass (a kernel whose rounding depends on the shape), or, with `few_rows`, plus `shape_error` in passes of
    fewer rows than that only (another kernel for a few rows)."""

    def __init__(self, shape_error: float, few_rows: int | None = None) -> None:
        self.shape_error = shape_error
        self.few_rows = few_rows

    def __call__(self, x, y):
        error = self.shape_error * (len(x) if self.few_rows is None else len(x) < self.few_rows)
        mean = x.flatten(1)[:, 300 : 300 + D] + y[:, None] + error
        return mean, torch.full_like(mean, -1.0)


class RowwiseDecoder:
    def logits(self, z, y):
        return (z[:, 0] - y)[:, None, None, None].expand(-1, 1, 28, 28)


@pytest.mark.parametrize(
    ("shape_error", "few_rows", "allowed"),
    [
        (0.0, None, 6),
        (1e-3, None, 1),
        (1e-3, 4 * 10, 6),  # a kernel for fewer than 4 uploads' rows (10 labels each): lone uploads are padded to 4
        (1e-3, 5 * 10, 1),  # one for fewer than 5: padding to 4 does not hide it
    ],
)
def test_uploads_are_scored_together_only_where_that_changes_no_bit(tiny_model_dir, shape_error, few_rows, allowed):
    import dataclasses

    from app.engine.interface import InferenceOptions
    from app.inference.worker import SCORE_MIN_ROWS, Inference
    from app.operations.encode import Upload

    assert SCORE_MIN_ROWS == 4
    model = load_model_dir(tiny_model_dir)
    model = dataclasses.replace(model, encoder=RowwiseEncoder(shape_error, few_rows), decoder=RowwiseDecoder())
    options = InferenceOptions(
        decode_chunk=8, max_pass_rows=8, max_encode_batch=6, png_compress_level=1, max_image_pixels=10**6
    )
    service = Inference(model, options)
    assert service.score_uploads == 1  # until checked
    assert service.check_scoring_passes() == allowed
    service.score_uploads = allowed
    uploads = [Upload(data=encoded(drawing((40 + 3 * i, 60))), label=None) for i in range(6)]
    assert service.run("encode", uploads) == [service.run("encode", [u])[0] for u in uploads]


def test_a_digit_the_model_has_no_label_for_is_a_422_on_both_endpoints(tmp_path: Path):
    model_dir = make_model_dir(
        tmp_path / "three", CVAEConfig(num_classes=3, latent_dim=4, hidden=(16,), channels=(4, 8))
    )
    with TestClient(create_app(Settings(model_dir=model_dir, inference_process=False))) as c:
        assert upload(c, encoded(drawing()), digit="2").status_code == 200
        assert ["body", "digit"] in [e["loc"] for e in problem(upload(c, encoded(drawing()), digit="3"), 422)["errors"]]
        assert c.post("/generate", json={"digit": [0, 2], "n": 2}).status_code == 200
        p = problem(c.post("/generate", json={"digit": [0, 5], "n": 2}), 422)
        assert "0-2" in p["detail"] and p["errors"][0]["loc"] == ["body", "digit"]
        assert upload(c, encoded(drawing())).json()["digit"] in (0, 1, 2)
