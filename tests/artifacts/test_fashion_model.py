"""The shipped Fashion-MNIST model (artifacts/fashion): the model-directory contract, what its manifest says it is,
the service serving it by its classes, and /encode's recorded figure measured again on Fashion-MNIST's test images
where Debian's dataset-fashion-mnist is installed (CI installs it and sets CVAE_REQUIRE_FASHION_MNIST=1: there a
missing set fails instead of skipping)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from model.artifacts import LoadedModel, load_model_dir
from model.pictures import encode_png
from tests.app.test_formats import assert_bit_identical
from training.data import FASHION, FASHION_MNIST_DIR, DataSplits, load_data_dir
from training.evaluation.uploads import preprocess_uploads, read_digits

SHIPPED = Path(__file__).parents[2] / "artifacts" / "fashion"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model_dir(SHIPPED)  # verifies every artifact's sha256 against the manifest


@pytest.fixture(scope="module")
def test_split() -> DataSplits:
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        reason = f"Fashion-MNIST is not at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CVAE_REQUIRE_FASHION_MNIST") == "1":
            pytest.fail(f"CVAE_REQUIRE_FASHION_MNIST=1 but {reason}")
        pytest.skip(reason)
    return load_data_dir(FASHION_MNIST_DIR, val_size=1000, seed=0)


def test_the_fashion_model_is_what_its_manifest_says(model: LoadedModel) -> None:
    m = model.manifest
    assert model.card.labels == list(FASHION.classes) and model.card.preprocessing == "frame"
    assert not model.card.is_digits and model.reader is not None and model.card.reading == "reader"
    assert m["data"]["name"] == "fashion-mnist" and m["data"]["count"] == 70_000 and m["data"]["val_source"] == "t10k"
    assert m["metrics"]["heldout_count"] == 10_000  # evaluated on the test split, which nothing trained on
    assert m["reproduce"].startswith("python -m training --dataset fashion-mnist --out artifacts/fashion ")
    assert m["reader"]["reproduce"] == m["reproduce"]  # the one command made every part
    assert m["reader"]["trained_on"] == "59500 training images of fashion-mnist"  # the training split's, less 500:
    assert m["reader"]["calibrated_on"] == "the last 500 training images, as /encode pre-processes them"
    # Its tone curves, fitted on the training split alone; the figures of what it draws are the toned samples', the
    # decoder's own kept beside them.
    assert model.tone is not None and m["tone"]["knots"] == 65 and m["reproduce"].endswith(" --tone-curves")
    assert m["tone"]["fitted_on"].startswith("60000 training images of fashion-mnist and 300 samples of each class")
    untoned = m["metrics"]["untoned"]
    assert m["metrics"]["frechet_ratio_to_train"] < untoned["frechet_ratio_to_train"]


def test_the_fashion_model_answers_alike_from_either_format(model: LoadedModel) -> None:
    assert_bit_identical(model, load_model_dir(SHIPPED, model_format="export"))


def test_the_service_serves_it_by_its_classes() -> None:
    app = create_app(Settings(model_dir=SHIPPED, model_name="fashion", inference_process=False))
    with TestClient(app) as client:
        card = client.get("/model").json()
        assert [c["name"] for c in card["classes"]] == list(FASHION.classes)
        png = client.post("/generate", json={"label": "Ankle Boot", "n": 2, "seed": 1})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content == client.post("/generate", json={"label": 9, "n": 2, "seed": 1}).content
        unknown = client.post("/generate", json={"label": "sock"})
        assert unknown.status_code == 422 and "ankle boot" in unknown.text
        infer = client.post(
            "/v2/models/fashion-generate/infer",
            json={"inputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [7]}]},
        )
        assert infer.status_code == 200 and infer.json()["model_name"] == "fashion-generate"


def test_encode_reads_the_test_images_as_recorded(model: LoadedModel, test_split: DataSplits) -> None:
    held = test_split.val
    uploads = preprocess_uploads([encode_png(img) for img in held.images], "frame", (28, 28))
    probs, _ = read_digits(model.encoder, model.decoder, model.prior, uploads, model.reader)
    accuracy = float((probs.argmax(1) == held.labels).float().mean())
    assert accuracy == pytest.approx(model.manifest["metrics"]["encode_accuracy_real"], abs=0.001)
    # An upload as a person would send it: one test image, scaled up, through the service.
    app = create_app(Settings(model_dir=SHIPPED, model_name="fashion", inference_process=False))
    big = held.images[0].repeat_interleave(4, 0).repeat_interleave(4, 1)
    with TestClient(app) as client:
        answer = client.post("/encode", files={"file": ("item.png", encode_png(big), "image/png")}).json()
    assert answer["name"] == FASHION.classes[int(held.labels[0])] and len(answer["probabilities"]) == 10
