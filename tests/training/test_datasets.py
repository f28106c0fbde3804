"""`--dataset`: what a dataset's images are (their classes' names, the pre-processing their uploads get) reaches the
model directory's manifest, Fashion-MNIST is read from Debian's location or --data-dir, and the digit-only steps
(the flagged 1s, the sets of digits that are not MNIST) are left out for images that are not digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.preprocessing import preprocess
from tests.training.test_train import FIXTURE, small_config
from training import steps
from training.__main__ import cli
from training.config import parse_config
from training.data import DIGITS, FASHION, FASHION_MNIST_DIR, FASHION_MNIST_PACKAGE
from training.reader import train as reader_train


def test_fashion_mnist_reads_debians_folder_by_default_and_data_dir_when_given() -> None:
    assert parse_config(["--dataset", "fashion-mnist"]).resolved_data_dir == FASHION_MNIST_DIR
    assert parse_config(["--dataset", "fashion-mnist", "--data-dir", "x"]).resolved_data_dir == Path("x")
    assert parse_config([]).resolved_data_dir == Path("data/mnist")
    assert parse_config(["--dataset", "fashion-mnist"]).kind == FASHION and parse_config([]).kind == DIGITS


def test_missing_fashion_mnist_is_one_line_naming_the_package(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    code = cli(
        ["--dataset", "fashion-mnist", "--data-dir", str(missing), "--out", str(tmp_path / "m"), "--no-progress"]
    )
    assert code == 2
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    message = record.getMessage()
    assert "\n" not in message and f"apt-get install {FASHION_MNIST_PACKAGE}" in message and str(missing) in message


def test_non_digit_images_get_no_flagged_ones() -> None:
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    labels = torch.ones(20, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    assert reader_train._flagged(images, None, g) is images
    assert not torch.equal(reader_train._flagged(images, labels, g), images)  # digits: some 1s flagged


@pytest.mark.slow
def test_one_command_writes_the_datasets_classes_and_preprocessing_into_the_manifest(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, dataset="fashion-mnist", data_dir=FIXTURE, epochs=1)
    manifest = steps.main(cfg, ["--dataset", "fashion-mnist"])
    assert manifest is not None
    on_disk = json.loads((cfg.out / "manifest.json").read_text())
    assert on_disk["labels"] == list(FASHION.classes) and on_disk["preprocessing"] == "frame"
    assert on_disk["reader"]["config"]["num_classes"] == 10
    # Not digits: the teacher's CNNs are plain ones (no varied strokes, no flagged 1s), on framed images.
    assert [m["recipe"] for m in on_disk["reader"]["members"][0]["teacher"]] == ["plain"] * 3


def test_the_readers_plain_images_are_what_encode_makes_of_an_upload_of_them() -> None:
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[:, 4:24, 2:26] = 200  # an item filling most of its frame
    framed, digits = reader_train.plain(images, "frame"), reader_train.plain(images, "mnist")
    assert framed.shape == digits.shape == (3, 1, 28, 28)
    assert torch.equal(framed[0], preprocess(images[0].float() / 255, "frame", (28, 28)))
    assert not torch.equal(framed, digits)  # to_mnist would shrink it into MNIST's 20 px box
