"""Digits in poor conditions: the test-only sets (training/evaluation/conditions.py), deterministic 28x28 PNGs every
one of which is read, and the reader's training augmentations (training/reader/conditions.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.imaging import decode_image, to_mnist
from training.data import load_pair
from training.evaluation import conditions_figures
from training.evaluation.conditions import KINDS, make_set
from training.evaluation.conditions_figures import figures
from training.reader.conditions import CONDITIONS, in_condition

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mnist-1000"


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
        # The share read at the page's "sure" level, and how many of those are right (none read so: not a number).
        assert 0 <= kind["sure_share"] <= 1
        assert 0 <= kind["sure_accuracy"] <= 1 if kind["sure_share"] else math.isnan(kind["sure_accuracy"])
    assert conditions_figures.main(["--model", str(tiny_model_dir), "--count", "3", "--kind", "speckle"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"speckle"}


# ---- training/reader/conditions.py: the same conditions, drawn afresh, for the reader's training digits ----------


@pytest.fixture(scope="module")
def canvas_digits() -> list[np.ndarray]:
    """Ten fixture MNIST digits as training.reading varies them: padded to 40 px and scaled to 80 (its CANVAS)."""
    d = load_pair(FIXTURE / "train-images-idx3-ubyte.gz", FIXTURE / "train-labels-idx1-ubyte.gz")
    x = F.pad(d.images[:10].unsqueeze(1).float() / 255, (6, 6, 6, 6))
    return list(F.interpolate(x, size=(80, 80), mode="bilinear", align_corners=False)[:, 0].numpy())


@pytest.mark.parametrize("condition", CONDITIONS)
def test_a_condition_is_grey_levels_the_same_for_the_same_generator(
    canvas_digits: list[np.ndarray], condition: str
) -> None:
    a = canvas_digits[0]
    first = in_condition(a, np.random.default_rng(7), condition)
    np.testing.assert_array_equal(first, in_condition(a, np.random.default_rng(7), condition))
    assert first.dtype == np.float32 and first.ndim == 2 and first.min() >= 0 and first.max() <= 1
    assert not np.array_equal(first, in_condition(a, np.random.default_rng(8), condition))
    np.testing.assert_array_equal(a, canvas_digits[0])  # the digit itself is left as it was


@pytest.mark.parametrize("condition", CONDITIONS)
def test_a_digit_in_any_condition_is_still_a_digit_to_the_pre_processing(
    canvas_digits: list[np.ndarray], condition: str
) -> None:
    rng = np.random.default_rng(0)
    for a in canvas_digits * 3:
        assert to_mnist(torch.from_numpy(in_condition(a, rng, condition))).sum() > 10  # never refused as blank


def test_conditions_are_drawn_at_random_when_none_is_named(canvas_digits: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    shapes = {in_condition(canvas_digits[0], rng).shape for _ in range(40)}
    assert shapes == {(80, 80), (28, 28)}  # speckle among them, at MNIST's own size
    with pytest.raises(ValueError, match="condition must be one of"):
        in_condition(canvas_digits[0], rng, "rain")


def test_bands_invert_whole_columns_or_rows_and_leave_the_digit_upright() -> None:
    blank = np.zeros((80, 80), dtype=np.float32)
    stroke = blank.copy()
    stroke[20:60, 38:42] = 1.0  # an upright stroke
    seen = set()
    for seed in range(40):
        bands = in_condition(blank, np.random.default_rng(seed), "bands")
        columns, rows = np.ptp(bands, axis=0).max() < 0.2, np.ptp(bands, axis=1).max() < 0.2
        assert columns != rows  # whole columns (bands at the sides) or whole rows (at the top and bottom)
        seen.add(columns)
        out = in_condition(stroke, np.random.default_rng(seed), "bands")
        ground = np.median(out[40, 30:50])
        assert int(np.abs(out[40, 30:50] - ground).argmax()) + 30 in range(38, 42)  # the stroke where it was
    assert seen == {True, False}
