"""Shared fixtures: a tiny random-weight model exported into a temporary model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.network import CVAE, CVAEConfig
from model.prior import GaussianPrior
from training.export import export_model_dir

TINY = CVAEConfig(latent_dim=4, hidden=(32,), channels=(4, 8), encoder="conv")


def make_model_dir(out: Path, cfg: CVAEConfig = TINY, seed: int = 0, temperature: float = 1.0) -> Path:
    torch.manual_seed(seed)
    model = CVAE(cfg).eval()
    export_model_dir(
        model,
        GaussianPrior.standard(cfg.num_classes, cfg.latent_dim),
        out,
        data={"name": "none (random weights)", "count": 0, "files": {}},
        config={"model": cfg.to_dict()},
        metrics={},
        reproduce="tests/conftest.py: make_model_dir",
        temperature=temperature,
    )
    return out


def problem(r, status: int) -> dict:
    """The RFC 9457 problem body of response r, checked: its status, media type and members."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (random weights, latent_dim 4) shared by the whole session; do not modify it."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny")
