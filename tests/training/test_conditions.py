"""Digits in poor conditions (training/evaluation/conditions.py): deterministic sets of 28x28 PNGs, every one read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.imaging import decode_image, to_mnist
from training.evaluation import conditions
from training.evaluation.conditions import KINDS, figures, make_set


def pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "L"
    return np.asarray(img, dtype=np.float32) / 255


@pytest.mark.parametrize("kind", KINDS)
def test_a_set_is_the_same_for_the_same_seed_and_another_for_another(kind: str) -> None:
    assert make_set(kind, 12, seed=3) == make_set(kind, 12, seed=3)
    assert make_set(kind, 12, seed=3) != make_set(kind, 12, seed=4)


@pytest.mark.parametrize("kind", KINDS)
def test_a_set_is_28x28_pngs_of_the_digits_in_turn(kind: str) -> None:
    samples = make_set(kind, 12)
    assert [d for _, d in samples] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert all(pixels(data).shape == (28, 28) for data, _ in samples)


@pytest.mark.parametrize("kind", KINDS)
def test_no_digit_of_any_kind_is_refused_as_blank(kind: str) -> None:
    for data, _ in make_set(kind, 30, seed=5):
        assert to_mnist(decode_image(data, 10**6)).sum() > 10


def test_grey_grounds_lie_on_both_sides_of_half_grey_with_ink_of_both_polarities() -> None:
    grounds, light_ink = [], []
    for data, _ in make_set("grey", 60):
        a = pixels(data)
        ground = float(np.median(np.concatenate([a[0], a[-1]])))
        grounds.append(ground)
        light_ink.append(a.max() - ground > ground - a.min())
    assert min(grounds) < 0.4 and max(grounds) > 0.6
    assert any(light_ink) and not all(light_ink)
    assert any(ink and g > 0.5 for ink, g in zip(light_ink, grounds, strict=True))  # chalk on a board lighter than half


def test_bands_are_of_the_other_polarity_at_both_sides() -> None:
    for data, _ in make_set("bands", 10):
        a = pixels(data)
        middle, sides = np.median(a[:2, 12:16]), (np.median(a[:, :3]), np.median(a[:, -3:]))
        assert all(abs(side - middle) > 0.5 for side in sides)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        make_set("drawn", 3)


def test_figures_report_each_kind_beside_the_plain_cnn(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = figures(tiny_model_dir, count=10, seed=0, kinds=("grey", "bands"))
    assert set(out) == {"grey", "bands"}
    for kind in out.values():
        assert kind["count"] == 10 and kind["refused"] == 0
        assert 0 <= kind["encode_accuracy"] <= 1 and 0 <= kind["judge_accuracy"] <= 1
        assert 0 <= kind["calibration_error"] <= 1
    assert conditions.main(["--model", str(tiny_model_dir), "--count", "3", "--kind", "speckle"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"speckle"}
