"""Which rule reads an upload's digit (model/manifest.py's ModelCard.reading): said by GET /model, every /encode
answer, the /encode operation's description and, for a model without a reader, a warning at start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from model.network import Reader, ReaderConfig
from tests.conftest import drawing, encoded
from training.reader import model_dir as reading


def test_a_model_without_a_reader_says_it_reads_by_the_generative_rule(client: TestClient) -> None:
    assert client.get("/model").json()["reading"] == "generative"
    r = client.post("/encode", files={"file": ("d.png", encoded(drawing()), "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert body["reading"] == "generative" and body["inferred"] is True and len(body["probabilities"]) == 10


def test_a_model_with_a_reader_says_it_reads_by_its_reader(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    torch.manual_seed(0)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16)
    reading.add_reader(model_dir, Reader(cfg).eval(), {"config": cfg.to_dict()})
    settings = Settings(model_dir=model_dir, inference_process=False)
    with caplog.at_level("WARNING", logger="app.factory"), TestClient(create_app(settings)) as c:
        assert c.get("/model").json()["reading"] == "reader"
        r = c.post("/encode", files={"file": ("d.png", encoded(drawing()), "image/png")})
        assert r.status_code == 200
        assert r.json()["reading"] == "reader" and r.json()["inferred"] is True
    assert "has no reader" not in caplog.text


def test_a_model_without_a_reader_is_served_with_a_warning(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture):
    settings = Settings(model_dir=tiny_model_dir, inference_process=False)
    with caplog.at_level("WARNING", logger="app.factory"), TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["status"] == "ready"
    assert "has no reader (reader.pt)" in caplog.text and '"reading": "generative"' in caplog.text


def test_the_encode_description_names_the_rule_by_the_reading_field(client: TestClient) -> None:
    """The served model may read by its reader: the description must not give the generative rule as the rule."""
    doc = client.get("/openapi.json").json()
    description = doc["paths"]["/encode"]["post"]["description"]
    assert "`reading`" in description and "explains the image" not in description and "Bayes" not in description
    field = doc["components"]["schemas"]["EncodeResponse"]["properties"]["reading"]["description"]
    assert "`reader`" in field and "`generative`" in field
