"""POST /interpolate: a walk between two latents under one label; its ends are /generate's drawings of them, bit for
bit; its steps stay typical of the prior; it is checked as /generate is."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

from app.operations.interpolate import walk
from model.prior import GaussianPrior
from tests.conftest import TILE, D, grid_size, pixels, problem

FROM = [0.5 * math.sin(i + 1) for i in range(D)]
TO = [-0.7 * math.cos(i) for i in range(D)]


def tile(png: bytes, i: int, columns: int, padding: int = 2) -> np.ndarray:
    img = pixels(png)
    r, c = divmod(i, columns)
    top, left = padding + r * (TILE + padding), padding + c * (TILE + padding)
    return img[top : top + TILE, left : left + TILE]


def test_interpolate_first_and_last_tiles_are_generates_drawings_of_from_and_to(client):
    r = client.post("/interpolate", json={"digit": 5, "from": FROM, "to": TO, "steps": 8})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert pixels(r.content).shape[::-1] == grid_size(1, 8)
    for end, i in ((FROM, 0), (TO, 7)):
        alone = client.post("/generate", json={"digit": 5, "latent": end, "n": 1})
        assert np.array_equal(tile(r.content, i, 8), tile(alone.content, 0, 1))


def test_interpolate_json_gives_the_walk_and_its_ends_exactly(client):
    r = client.post(
        "/interpolate", json={"digit": 3, "from": FROM, "to": TO, "steps": 5, "columns": 2, "padding": 0, "scale": 2},
        headers={"Accept": "application/json"},
    )  # fmt: skip
    body = r.json()
    assert r.status_code == 200 and body["labels"] == [3] * 5 and body["seed"] is None and body["columns"] == 2
    assert len(body["latents"]) == 5
    assert body["latents"][0] == list(np.float32(FROM).astype(float)) and body["latents"][-1] == list(
        np.float32(TO).astype(float)
    )
    assert pixels(base64.b64decode(body["png_base64"])).shape == (3 * TILE * 2, 2 * TILE * 2)


def test_walk_keeps_the_whitened_norm_between_its_ends():
    prior = GaussianPrior.standard(10, 16)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    z = walk(prior, 2, a.tolist(), b.tolist(), 9)
    norms = z.double().norm(dim=1)
    ends = sorted([float(a.norm()), float(b.norm())])
    assert bool((norms >= ends[0] - 1e-4).all() and (norms <= ends[1] + 1e-4).all())  # a straight line sags inside
    assert float(((a + b) / 2).norm()) < ends[0]  # (the straight line's midpoint, for these ends)
    assert torch.equal(z[0], a) and torch.equal(z[-1], b)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"digit": 5, "from": [0.0] * (D - 1), "to": [0.0] * D}, ["body", "from"]),
        ({"digit": 5, "from": [0.0] * D, "to": [0.0] * (D + 1)}, ["body", "to"]),
        ({"digit": 5, "from": [0.0] * D, "to": [0.0] * D, "steps": 1}, ["body", "steps"]),
        ({"digit": 5, "from": [0.0] * D, "to": [0.0] * D, "steps": 100_000}, ["body", "steps"]),
        ({"digit": 10, "from": [0.0] * D, "to": [0.0] * D}, ["body", "digit"]),
        ({"digit": 5, "from": [0.0] * D}, ["body", "to"]),
        ({"digit": 5, "from": [0.0] * D, "to": [0.0] * D, "seed": 3}, ["body", "seed"]),
    ],
)
def test_interpolate_names_what_to_fix(client, body, loc):
    p = problem(client.post("/interpolate", json=body), 422)
    assert p["errors"][0]["loc"][: len(loc)] == loc


def test_interpolate_refuses_non_finite_numbers_and_too_large_grids(client):
    r = client.post(
        "/interpolate", content=b'{"digit": 1, "from": [NaN], "to": [0]}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422)
    body = {"digit": 1, "from": [0.0] * D, "to": [0.0] * D, "steps": 1024, "columns": 1024, "scale": 8}
    assert problem(client.post("/interpolate", json=body), 422)["errors"][0]["type"] == "output_too_large"
