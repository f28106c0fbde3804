"""The digit sets that are not MNIST (training.evaluation.testsets): reproducible from a seed, of the kinds and formats
they claim, and read by the service's pre-processing as digits (photos included: the paper's light is divided out)."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.imaging import decode_image, to_mnist
from model.uploads import ImageError
from training.evaluation.testsets import (
    KINDS,
    PAD,
    SKELETONS,
    available_fonts,
    font_packages,
    hand_strokes,
    make_set,
    render_strokes,
)


def fonts_or_skip() -> None:
    if not available_fonts():
        reason = f"no test fonts installed: apt-get install {' '.join(font_packages())}"
        if os.environ.get("CVAE_REQUIRE_FONTS") == "1":
            pytest.fail(f"CVAE_REQUIRE_FONTS=1 but {reason}")
        pytest.skip(reason)


@pytest.mark.parametrize("kind", KINDS)
def test_a_set_is_the_same_for_the_same_seed_and_another_for_another(kind: str) -> None:
    if kind == "typed":
        fonts_or_skip()
    first, again, other = make_set(kind, 10, seed=3), make_set(kind, 10, seed=3), make_set(kind, 10, seed=4)
    assert first == again
    assert [d for _, d in first] == list(range(10))
    assert all(a != b for (a, _), (b, _) in zip(first, other, strict=True))


def test_drawn_digits_are_the_pads_black_on_white_pngs() -> None:
    for data, _ in make_set("drawn", 20, seed=0):
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.size == (PAD, PAD)
        a = np.asarray(img)
        assert a[0].min() == 255 and a.min() == 0  # white ground, black ink


def test_photos_are_large_jpegs_of_a_small_pencil_digit_under_uneven_light() -> None:
    for data, _ in make_set("photographed", 4, seed=0):
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.size == (1024, 768) and img.mode == "RGB"
        grey = np.asarray(img.convert("L"), dtype=np.float32)
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        assert np.percentile(border, 95) - np.percentile(border, 5) > 20  # the light is uneven
        assert grey.min() > 10  # pencil is grey, never black


def test_scans_are_coarse_digits_scaled_up() -> None:
    for data, _ in make_set("scanned", 6, seed=0):
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.width >= 60


def test_typed_digits_come_from_debians_fonts() -> None:
    fonts_or_skip()
    samples = make_set("typed", 20, seed=0)
    assert {Image.open(io.BytesIO(d)).format for d, _ in samples} <= {"PNG", "JPEG"}


def test_make_set_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        make_set("painted", 3)
    with pytest.raises(FileNotFoundError, match="fonts-"):
        make_set("typed", 3, fonts=[])


def test_every_letterform_of_every_digit_is_drawn_inside_the_pad() -> None:
    rng = random.Random(0)
    for digit, forms in SKELETONS.items():
        assert len(forms) >= 2, digit  # open and closed, with and without a bar, ...
        for _ in range(20):
            points = np.concatenate([np.asarray(s) for s in hand_strokes(digit, rng)])
            assert points.min() > -0.45 and points.max() < 1.45


def mnist_form(data: bytes) -> torch.Tensor:
    return to_mnist(decode_image(data, 10_000_000))[0]


def test_a_photographed_digit_is_found_and_centred_not_a_shadows_edge() -> None:
    for data, _ in make_set("photographed", 10, seed=5):
        x = mnist_form(data)
        assert x.sum() > 20  # ink found, not a blank refusal
        # Cropped to the digit and fitted in 20x20: nothing on the field's outer rows and columns.
        assert x[:2].sum() + x[-2:].sum() + x[:, :2].sum() + x[:, -2:].sum() < 0.02 * x.sum()


def test_the_light_of_a_photo_is_divided_out_and_an_empty_photo_is_blank() -> None:
    """Paper under a shadow, no digit: refused as blank (before: the shadow's edge was read as a digit)."""
    yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32)
    light = 0.9 - 0.3 / (1 + np.exp(-(xx - 500 + 0.3 * yy) / 30))  # a soft-edged shadow across the sheet
    noise = np.random.default_rng(0).normal(0, 0.01, light.shape).astype(np.float32)
    with pytest.raises(ImageError) as e:
        to_mnist(torch.from_numpy(np.clip(light + noise, 0, 1)))
    assert e.value.reason == "blank"
    # The same sheet with a pencil stroke in the shadow: found, and only the stroke.
    sheet = light + noise
    sheet[300:420, 700:706] *= 0.5
    x = to_mnist(torch.from_numpy(np.clip(sheet, 0, 1)))[0]
    cols = torch.nonzero(x.sum(dim=0) > 0.5).flatten()
    assert 0 < len(cols) <= 6  # a thin vertical bar, fitted to 20 px tall


def test_an_even_ground_is_not_flat_fielded() -> None:
    """A drawing on a white canvas goes through the plain path (to_mnist's output is what it was before photos)."""
    canvas = render_strokes(hand_strokes(3, random.Random(1)), size=(PAD, PAD), box=(60, 40, 200), width=20)
    grey = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255)
    from model.imaging import _uneven_light

    assert _uneven_light(grey.numpy()) is None


def test_ci_installs_every_font_the_typed_set_uses() -> None:
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    line = next(line for line in ci.splitlines() if line.startswith('stage "test dependencies (fonts)"'))
    assert set(line.split()[5:]) == set(font_packages())
