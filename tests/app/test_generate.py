"""POST /generate: PNG grids, layout, reproducibility, latents, negotiation and every kind of bad input."""

from __future__ import annotations

import base64
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.api.routes.operations import wants_json
from app.engine.interface import InferenceOptions
from app.factory import create_app
from app.inference.worker import Inference
from app.operations.generate import GenerateRequest, make_spec
from app.settings import Settings
from model.artifacts import load_model_dir
from model.network import CVAEConfig
from model.prior import AggregatePosteriorPrior
from tests.conftest import TILE, D, grid_size, make_model_dir, metric, pixels, problem


def tile(a: np.ndarray, row: int, col: int, padding: int = 2) -> np.ndarray:
    y, x = padding + row * (TILE + padding), padding + col * (TILE + padding)
    return a[y : y + TILE, x : x + TILE]


# --- the image ------------------------------------------------------------------------------------------------


def test_generate_returns_a_greyscale_png_grid_with_one_row_per_digit(client):
    r = client.post("/generate", json={"digit": 3})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    a = pixels(r.content)
    assert a.shape[::-1] == grid_size(1, 8)  # n defaults to 8, columns to n
    assert int(r.headers["x-seed"]) >= 0
    assert r.headers["x-model-id"].startswith("cvae-")


def test_generate_hundred_tiles_in_ten_columns_without_padding_is_280x280(client):
    r = client.post("/generate", json={"digit": 4, "n": 100, "columns": 10, "padding": 0, "scale": 1})
    assert r.status_code == 200
    assert pixels(r.content).shape == (280, 280)


def test_generate_lays_tiles_out_digit_major_then_sample_row_major(client):
    r = client.post(
        "/generate",
        json={"digit": [1, 2], "n": 3, "columns": 2, "seed": 5},
        headers={"Accept": "application/json"},
    )
    body = r.json()
    assert body["labels"] == [1, 1, 1, 2, 2, 2]
    assert (body["width"], body["height"]) == grid_size(3, 2)
    assert pixels(base64.b64decode(body["png_base64"])).shape[::-1] == grid_size(3, 2)


def test_generate_scale_enlarges_every_pixel(client):
    one = pixels(client.post("/generate", json={"digit": 5, "n": 2, "seed": 3}).content)
    three = pixels(client.post("/generate", json={"digit": 5, "n": 2, "seed": 3, "scale": 3}).content)
    assert np.array_equal(three, one.repeat(3, axis=0).repeat(3, axis=1))


def test_generate_pads_with_black_between_and_around_tiles(client):
    a = pixels(client.post("/generate", json={"digit": 0, "n": 3, "padding": 4, "seed": 1}).content)
    assert a.shape[::-1] == grid_size(1, 3, padding=4)
    assert a[:4].max() == 0 and a[:, :4].max() == 0 and a[:, 32:36].max() == 0


# --- reproducibility ------------------------------------------------------------------------------------------


def test_generate_same_seed_gives_byte_identical_png(client):
    body = {"digit": [2, 7], "n": 5, "seed": 1234, "temperature": 0.7}
    first, second = (client.post("/generate", json=body) for _ in range(2))
    assert first.content == second.content
    assert first.headers["x-seed"] == "1234"


def test_generate_without_seed_reports_one_that_reproduces_the_grid(client):
    r = client.post("/generate", json={"digit": 6, "n": 4})
    seed = int(r.headers["x-seed"])
    again = client.post("/generate", json={"digit": 6, "n": 4, "seed": seed})
    assert again.content == r.content
    other = client.post("/generate", json={"digit": 6, "n": 4})
    assert other.headers["x-seed"] != r.headers["x-seed"]


def test_generate_different_seeds_give_different_images(client):
    a = client.post("/generate", json={"digit": 8, "seed": 1}).content
    b = client.post("/generate", json={"digit": 8, "seed": 2}).content
    assert a != b


def test_generate_digit_list_shares_latent_points_down_each_column(client):
    # tiny_model_dir's prior is N(0, I) for every digit, so z = temperature * eps: equal down a column.
    body = client.post(
        "/generate", json={"digit": [0, 5, 9], "n": 4, "seed": 9}, headers={"Accept": "application/json"}
    ).json()
    z = np.array(body["latents"]).reshape(3, 4, D)
    assert np.array_equal(z[0], z[1]) and np.array_equal(z[0], z[2])
    assert not np.array_equal(z[0, 0], z[0, 1])


def test_a_grid_decodes_one_latent_per_column_and_one_digit_samples_its_own_prior(tmp_path: Path):
    # Each digit's prior a mixture of its own components, far from the others': a grid's columns must still be one
    # latent each (drawn from every digit's components pooled), and a single digit must sample its own.
    g = torch.Generator().manual_seed(0)
    means = torch.randn(10, 5, D, generator=g) * 0.1 + 10 * torch.arange(10.0).view(10, 1, 1)
    model_dir = make_model_dir(tmp_path / "m", prior=AggregatePosteriorPrior(means, torch.full((10, 5, D), -4.0)))
    with TestClient(create_app(Settings(model_dir=model_dir))) as c:

        def latents(digit: int | list[int]) -> np.ndarray:
            body = {"digit": digit, "n": 6, "seed": 3, "temperature": 1.0}
            return np.array(c.post("/generate", json=body, headers={"Accept": "application/json"}).json()["latents"])

        grid = latents([0, 4, 9]).reshape(3, 6, D)
        threes, nines = latents(3), latents(9)
    assert np.array_equal(grid[0], grid[1]) and np.array_equal(grid[0], grid[2])  # one hand per column
    assert len({round(float(v), 3) for v in grid[0, :, 0]}) > 1  # columns differ from each other
    assert np.all(np.abs(threes[:, 0] - 30) < 1) and np.all(np.abs(nines[:, 0] - 90) < 1)  # each its own prior
    assert not np.all(np.abs(grid[0, :, 0] - 90) < 1)  # a column is drawn from every digit's components


def test_generate_temperature_scales_the_prior_sample(client):
    hot = client.post("/generate", json={"digit": 2, "n": 3, "seed": 4, "temperature": 2.0},
                      headers={"Accept": "application/json"}).json()  # fmt: skip
    cold = client.post("/generate", json={"digit": 2, "n": 3, "seed": 4, "temperature": 0.5},
                       headers={"Accept": "application/json"}).json()  # fmt: skip
    assert np.allclose(np.array(hot["latents"]), 4 * np.array(cold["latents"]), atol=1e-6)
    zero = client.post("/generate", json={"digit": 2, "n": 3, "seed": 4, "temperature": 0},
                       headers={"Accept": "application/json"}).json()  # fmt: skip
    assert np.array(zero["latents"]).max() == 0  # the prior mean


def test_generate_samples_at_the_models_temperature_unless_asked(tmp_path: Path):
    model_dir = make_model_dir(tmp_path / "m", temperature=0.5)
    with TestClient(create_app(Settings(model_dir=model_dir))) as c:
        assert c.get("/model").json()["prior"]["temperature"] == 0.5

        def latents(**extra: float) -> np.ndarray:
            body = {"digit": [2, 7], "n": 3, "seed": 4, **extra}
            return np.array(c.post("/generate", json=body, headers={"Accept": "application/json"}).json()["latents"])

        default, one = latents(), latents(temperature=1.0)
    assert np.abs(one).max() > 0
    assert np.allclose(default, 0.5 * one, atol=1e-6)  # N(0, I) prior: z = temperature * eps


# --- latents --------------------------------------------------------------------------------------------------


def test_generate_uses_one_given_latent_for_every_sample(client):
    r = client.post("/generate", json={"digit": 7, "n": 3, "latent": [0.5, -1.0, 0.25, 2.0]})
    assert r.status_code == 200
    assert "x-seed" not in r.headers
    a = pixels(r.content)
    assert np.array_equal(tile(a, 0, 0), tile(a, 0, 1)) and np.array_equal(tile(a, 0, 0), tile(a, 0, 2))


def test_generate_list_of_latents_gives_n_and_is_used_as_is(client):
    latent = [[0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 1.0, 2.0]]
    body = client.post(
        "/generate", json={"digit": [3, 4], "latent": latent}, headers={"Accept": "application/json"}
    ).json()
    assert body["seed"] is None
    assert body["labels"] == [3, 3, 4, 4]
    assert np.allclose(body["latents"], latent + latent)


def test_generate_from_latent_decodes_exactly_that_latent(client, tiny_model_dir):
    import torch

    from model.pictures import to_uint8

    latent = [0.3, -0.7, 1.1, 0.05]
    a = pixels(client.post("/generate", json={"digit": 6, "n": 1, "latent": latent, "padding": 0}).content)
    model = load_model_dir(tiny_model_dir)
    with torch.inference_mode():
        expected = to_uint8(model.decoder(torch.tensor([latent]), torch.tensor([6])))[0, 0].numpy()
    assert np.abs(a.astype(int) - expected).max() <= 1  # one forward row vs. a padded chunk: last-bit rounding


def test_a_model_with_tone_curves_draws_its_decoders_levels_through_them(tmp_path: Path):
    from model.pictures import to_uint8
    from tests.model.test_tone import ten_curves
    from training.cvae.tone import add_tone

    toned = make_model_dir(tmp_path / "toned")
    add_tone(toned, ten_curves(), {"knots": 9, "fitted_on": "random curves (a test)", "seed": 0})
    latent, model = [0.3, -0.7, 1.1, 0.05], load_model_dir(toned)
    with TestClient(create_app(Settings(model_dir=toned))) as c:
        a = pixels(c.post("/generate", json={"digit": 6, "n": 1, "latent": latent, "padding": 0}).content)
    with torch.inference_mode():
        z, y = torch.tensor([latent]), torch.tensor([6])
        expected = to_uint8(model.draw(z, y))[0, 0].numpy()
        untoned = to_uint8(model.decoder(z, y))[0, 0].numpy()
    assert np.abs(a.astype(int) - expected).max() <= 1 and np.abs(a.astype(int) - untoned).max() > 10


# --- content negotiation --------------------------------------------------------------------------------------


def test_generate_json_carries_the_same_png_and_everything_to_reproduce_it(client):
    body = {"digit": [1, 4], "n": 3, "seed": 77}
    png = client.post("/generate", json=body).content
    r = client.post("/generate", json=body, headers={"Accept": "application/json"})
    assert r.headers["content-type"] == "application/json"
    j = r.json()
    assert base64.b64decode(j["png_base64"]) == png
    assert j["seed"] == 77 and j["model_id"].startswith("cvae-")
    assert j["digits"] == [1, 4] and j["labels"] == [1, 1, 1, 4, 4, 4] and j["columns"] == 3
    assert len(j["latents"]) == 6 and all(len(z) == D for z in j["latents"])
    assert (j["width"], j["height"]) == grid_size(2, 3)


@pytest.mark.parametrize(
    ("accept", "json_"),
    [
        (None, False),
        ("*/*", False),
        ("image/png", False),
        ("application/json", True),
        ("application/json, image/png", False),  # a tie goes to the PNG
        ("image/png;q=0.5, application/json", True),
        ("image/*;q=0.1, application/*", True),
        ("text/html, application/json;q=0.9, */*;q=0.8", True),
        ("application/json;q=0, */*", False),
    ],
)
def test_wants_json_follows_accept_q_values(accept, json_):
    assert wants_json(accept) is json_


def test_generate_refuses_an_accept_it_cannot_satisfy_with_406(client):
    r = client.post("/generate", json={"digit": 1}, headers={"Accept": "text/html"})
    assert r.status_code == 406
    assert r.headers["content-type"] == "application/problem+json"


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"digit": 10}, "digit"),
        ({"digit": -1}, "digit"),
        ({"digit": "three"}, "digit"),
        ({"label": "three"}, "label"),
        ({"label": 10}, "label"),
        ({"label": [1, "12"]}, "label"),
        ({"digit": True}, "digit"),
        ({"digit": 3.5}, "digit"),
        ({"digit": []}, "digit"),
        ({"digit": [1, 12]}, "digit"),
        ({"digit": list(range(10)) * 4}, "digit"),
        ({"digit": 1, "n": 0}, "n"),
        ({"digit": 1, "n": 257}, "n"),
        ({"digit": 1, "n": "8"}, "n"),
        ({"digit": 1, "temperature": -0.1}, "temperature"),
        ({"digit": 1, "temperature": 5.01}, "temperature"),
        ({"digit": 1, "seed": -1}, "seed"),
        ({"digit": 1, "seed": 2**63}, "seed"),
        ({"digit": 1, "columns": 0}, "columns"),
        ({"digit": 1, "padding": -1}, "padding"),
        ({"digit": 1, "padding": 17}, "padding"),
        ({"digit": 1, "scale": 0}, "scale"),
        ({"digit": 1, "scale": 9}, "scale"),
        ({"digit": 1, "scale": 1.5}, "scale"),
        ({"digit": 1, "sead": 3}, "sead"),
        ({"digit": 1, "latent": [1, 2, "x", 4]}, "latent"),
        ({"digit": 1, "latent": []}, "latent"),
        ({"digit": 1, "latent": 3}, "latent"),
    ],
)
def test_generate_rejects_out_of_range_or_malformed_fields_with_422_naming_them(client, body, field):
    p = problem(client.post("/generate", json=body), 422)
    assert any(field in e["loc"] for e in p["errors"]), p
    assert all({"loc", "msg", "type"} == e.keys() for e in p["errors"])


@pytest.mark.parametrize(
    "body",
    [
        {"digit": [1, 2, 3, 4, 5], "n": 256},  # 1280 tiles
        {"digit": 1, "latent": [[0.0] * D] * 3, "n": 2},  # n disagrees with the latents
        {"digit": 1, "latent": [0.0] * D, "seed": 3},  # seed does not apply to a given latent
        {"digit": 1, "latent": [0.0] * D, "temperature": 0.5},
    ],
)
def test_generate_rejects_inconsistent_requests_with_422(client, body):
    problem(client.post("/generate", json=body), 422)


def test_generate_rejects_a_grid_too_large_to_draw(client):
    p = problem(client.post("/generate", json={"digit": [0, 1, 2, 3], "n": 256, "scale": 8}), 422)
    assert "pixels" in p["detail"]


@pytest.mark.parametrize("latent", [[1.0, 2.0], [[0.0] * D, [0.0] * (D + 1)]])
def test_generate_rejects_a_latent_of_the_wrong_length_stating_the_expected_size(client, latent):
    p = problem(client.post("/generate", json={"digit": 2, "latent": latent}), 422)
    assert f"{D} numbers" in p["detail"] and f"D = {D}" in p["detail"]
    assert p["errors"][0]["loc"][:2] == ["body", "latent"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e6])
def test_generate_rejects_non_finite_or_absurd_latents(client, bad):
    # Python's json module (what FastAPI parses with) reads NaN and Infinity; httpx will not write them.
    body = json.dumps({"digit": 2, "latent": [0.0, bad, 0.0, 0.0]})
    r = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    p = problem(r, 422)
    assert p["errors"][0]["loc"][:2] == ["body", "latent"]


def test_generate_malformed_json_is_a_400_problem(client):
    r = client.post("/generate", content=b'{"digit": 3,', headers={"Content-Type": "application/json"})
    assert "not valid JSON" in problem(r, 400)["detail"]


def test_generate_body_that_is_not_json_is_a_415_problem(client):
    r = client.post("/generate", content=b"digit=3", headers={"Content-Type": "application/x-www-form-urlencoded"})
    problem(r, 415)


def test_generate_empty_body_is_a_422_problem(client):
    problem(client.post("/generate", content=b"", headers={"Content-Type": "application/json"}), 422)


# --- batching -------------------------------------------------------------------------------------------------


def test_generate_is_byte_identical_alone_and_batched_with_concurrent_requests(tiny_model_dir):
    bodies = [{"digit": d % 10, "n": 1 + d % 7, "seed": 100 + d} for d in range(24)]
    # A long max_wait_ms so that concurrent requests certainly share batches (and forward passes).
    settings = Settings(model_dir=tiny_model_dir, max_wait_ms=50, decode_chunk=16)
    with TestClient(create_app(settings)) as c:
        alone = [c.post("/generate", json=b).content for b in bodies]
        batches_before = metric(c, 'cvae_batch_size_requests_count{model="digits",operation="generate"}')
        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(lambda b: c.post("/generate", json=b).content, bodies))
        batches = metric(c, 'cvae_batch_size_requests_count{model="digits",operation="generate"}') - batches_before
    assert together == alone
    assert batches < len(bodies)  # some requests did share a batch


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """Wide enough layers that the matrix kernels depend on the batch shape (the tiny model's may not)."""
    cfg = CVAEConfig(latent_dim=8, hidden=(256, 256), encoder="mlp")
    return load_model_dir(make_model_dir(tmp_path_factory.mktemp("wide") / "m", cfg))


def options(**overrides: int) -> InferenceOptions:
    defaults = {"decode_chunk": 32, "max_pass_rows": 256, "max_encode_batch": 1, "png_compress_level": 1}
    return InferenceOptions(**(defaults | overrides), max_image_pixels=10**6)


def spec_of(service: Inference, digits: list[int], n: int, seed: int):
    body = GenerateRequest(digit=digits, n=n, seed=seed, temperature=1.0)
    return make_spec(service.card, body, with_latents=False)


@pytest.mark.parametrize("large_passes", [False, True])
def test_service_rows_do_not_depend_on_what_shares_their_batch(wide_model, large_passes):
    service = Inference(wide_model, options())
    if large_passes:
        service.pass_rows = service.check_decoder_passes()  # larger than a chunk if this machine's kernels allow
    target = spec_of(service, [3], 5, 42)
    alone = service.run("generate", [target])[0].png
    for companions in ([[1], 1, 1],), ([[0, 9], 17, 2], [[4], 30, 3]), ([[7], 61, 4],):
        specs = [spec_of(service, *c) for c in companions]
        drawings = service.run("generate", [*specs, target, spec_of(service, [2], 3, 5)])
        assert drawings[len(specs)].png == alone


@pytest.mark.parametrize("large_passes", [False, True])
def test_service_decoder_output_is_bit_identical_whatever_shares_the_forward_pass(wide_model, large_passes):
    import torch

    service = Inference(wide_model, options())
    if large_passes:
        service.pass_rows = service.check_decoder_passes()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(70, 8, generator=g)
    y = torch.randint(0, 10, (70,), generator=g)
    with torch.inference_mode():
        alone = service.decode(z[:2], y[:2])
        for before in (1, 5, 31, 45):
            together = service.decode(torch.cat([z[2 : 2 + before], z[:2]]), torch.cat([y[2 : 2 + before], y[:2]]))
            assert torch.equal(together[before:], alone), before


class CountingDecoder:
    """A stand-in decoder: each pixel a function of its own row, plus `shape_error` times the pass's row count
    (a kernel whose rounding depends on the shape). Records the row count of every pass."""

    def __init__(self, shape_error: float) -> None:
        self.shape_error = shape_error
        self.passes: list[int] = []

    def __call__(self, z, y):
        import torch

        self.passes.append(len(z))
        row = torch.where(z[:, 0] + y > 0, 0.25, 0.75) + self.shape_error * len(z)  # exact whatever the shape
        return row[:, None, None, None].expand(-1, 1, 28, 28)


@pytest.mark.parametrize("shape_error, allowed", [(0.0, True), (1e-7, False)])
def test_large_decoder_passes_only_when_every_row_comes_out_the_same(wide_model, shape_error, allowed):
    import dataclasses

    import torch

    decoder = CountingDecoder(shape_error)
    service = Inference(dataclasses.replace(wide_model, decoder=decoder), options(decode_chunk=8, max_pass_rows=100))
    assert service.pass_rows == 8  # until checked
    service.pass_rows = service.check_decoder_passes()
    assert service.pass_rows == (96 if allowed else 8)  # whole chunks, at most max_pass_rows
    assert max(decoder.passes) == (96 if allowed else 16)  # checked up to the setting, or until a size failed
    decoder.passes.clear()
    with torch.inference_mode():
        service.decode(torch.zeros(200, 8), torch.zeros(200, dtype=torch.long))
    assert decoder.passes == ([96, 96, 8] if allowed else [8] * 25)


def test_the_largest_decoder_pass_is_its_own_setting_not_the_batch_size():
    assert Settings(max_batch=8).max_pass_rows == 256
    with pytest.raises(ValueError, match="max_pass_rows"):
        Settings(max_pass_rows=1025)  # the start-up check's cost grows with the square


def test_the_inference_process_reports_what_prepare_allowed(tiny_model_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="app.engine.process")
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, max_pass_rows=64))):
        pass
    assert any("decoder passes of up to" in r.getMessage() for r in caplog.records)
