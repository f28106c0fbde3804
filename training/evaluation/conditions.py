"""Digits in poor conditions, made from a seed: 28x28 PNGs as MNIST stores them, each digit under one condition.

Seven kinds, each a list of (upload bytes, digit), the same for the same seed and count:
- grey: ink on a uniform grey ground (0.3-0.7: both sides of half grey), light ink (chalk, a faint photo) or dark;
- board: chalk on a dark board (0.05-0.3), the chalk broken and uneven, the board smudged;
- ruled: ruled or squared paper, the lines fainter than the ink, either polarity;
- crossed: a zigzag stroke through the digit (a crossing-out), thinner than the digit's, either polarity;
- bands: a band of the other polarity down the left and the right (a scan's dark margins, a book's gutter);
- fog: a faint digit under a fog of grey, the ground varying slowly and as much as the ink departs from it;
- speckle: salt and pepper noise over 10-20% of the pixels.
The digits are the project's own hand-written skeletons (training.evaluation.testsets.hand_strokes), drawn into
MNIST's 20 px box: no MNIST digit is used. These sets only ever test: nothing trains on them. They are measured
beside a plain CNN on the same images by training/evaluation/conditions_figures.py.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image

from training.evaluation.testsets import hand_strokes
from training.strokes import render_strokes

Sample = tuple[bytes, int]
SIDE = 28  # MNIST's field
BOX = 20  # MNIST's box, the digit's height
KINDS = ("grey", "board", "ruled", "crossed", "bands", "fog", "speckle")


def mnist_digit(digit: int, rng: random.Random) -> np.ndarray:
    """A hand-written digit as MNIST stores one: white on black, float32 (SIDE, SIDE) in [0, 1], about BOX px tall
    near the centre, pen 1.6-3.4 px."""
    strokes = hand_strokes(digit, rng)
    left, top = (SIDE - BOX) / 2 + rng.uniform(-1, 1), (SIDE - BOX) / 2 + rng.uniform(-1, 1)
    img = render_strokes(strokes, size=(SIDE, SIDE), box=(left, top, BOX), width=rng.uniform(1.6, 3.4), ink=255,
                         paper=0, supersample=4)  # fmt: skip
    return np.asarray(img, dtype=np.float32) / 255


def _smooth_field(np_rng: np.random.Generator, cells: int) -> np.ndarray:
    """A slowly varying field (SIDE, SIDE) in about [-1, 1]: cells x cells random values, scaled up bicubically."""
    coarse = np_rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((SIDE, SIDE), Image.Resampling.BICUBIC), dtype=np.float32)


def _on_ground(ink: np.ndarray, ground: np.ndarray | float, level: np.ndarray | float) -> np.ndarray:
    """Ink (0..1 coverage) laid over a ground: each pixel moves from the ground towards `level` by its coverage."""
    return ground + (level - ground) * ink


def grey_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    ground = rng.uniform(0.3, 0.7)
    light = rng.random() < 0.6
    level = rng.uniform(0.85, 1.0) if light else rng.uniform(0.0, 0.15)
    a = _on_ground(mnist_digit(digit, rng), ground, level)
    return a + np_rng.normal(0, rng.uniform(0.0, 0.02), a.shape).astype(np.float32)


def board_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    ground = rng.uniform(0.05, 0.3) + 0.05 * _smooth_field(np_rng, 4)  # smudged
    chalk = mnist_digit(digit, rng) * np_rng.uniform(0.55, 1.0, (SIDE, SIDE)).astype(np.float32)  # broken strokes
    a = _on_ground(chalk, ground, rng.uniform(0.7, 0.95))
    return a + np_rng.normal(0, 0.02, a.shape).astype(np.float32)


def _paper_and_ink(rng: random.Random) -> tuple[float, float]:
    """(ground, ink level): dark ink on light paper or light ink on a dark ground, at even odds."""
    paper, ink = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.2)
    return (paper, ink) if rng.random() < 0.5 else (1 - paper, 1 - ink)


def ruled_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    ground, level = _paper_and_ink(rng)
    lines = np.zeros((SIDE, SIDE), dtype=np.float32)
    pitch, strength = rng.uniform(4.0, 8.0), rng.uniform(0.3, 0.6)
    for axis in (0, 1) if rng.random() < 0.5 else (0,):  # ruled: rows; squared: rows and columns
        at = rng.uniform(0, pitch)
        while at < SIDE:
            i = int(at)
            frac = at - i  # a line one px wide, anti-aliased across two
            index = (i, slice(None)) if axis == 0 else (slice(None), i)
            lines[index] = np.maximum(lines[index], strength * (1 - frac))
            if i + 1 < SIDE:
                index = (i + 1, slice(None)) if axis == 0 else (slice(None), i + 1)
                lines[index] = np.maximum(lines[index], strength * frac)
            at += pitch
    a = _on_ground(np.maximum(mnist_digit(digit, rng), lines), ground, level)
    return a + np_rng.normal(0, 0.01, a.shape).astype(np.float32)


def crossed_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    ground, level = _paper_and_ink(rng)
    x = mnist_digit(digit, rng)
    turns = rng.randint(2, 4)
    y0, amp, tilt = rng.uniform(10, 18), rng.uniform(2, 5), rng.uniform(-0.3, 0.3)
    xs = np.linspace(rng.uniform(0, 4), SIDE - rng.uniform(0, 4), turns + 2)
    pts = [(float(px) / SIDE, (y0 + tilt * (px - SIDE / 2) + (amp if k % 2 else -amp)) / SIDE)
           for k, px in enumerate(xs)]  # fmt: skip
    if rng.random() < 0.5:  # as often down the page as across it
        pts = [(py, px) for px, py in pts]
    drawn = render_strokes([pts], size=(SIDE, SIDE), box=(0, 0, SIDE), width=rng.uniform(1.0, 1.8), ink=255,
                           paper=0, supersample=4)  # fmt: skip
    line = np.asarray(drawn, dtype=np.float32) / 255 * np.float32(rng.uniform(0.6, 1.0))
    a = _on_ground(np.maximum(x, line), ground, level)
    return a + np_rng.normal(0, 0.01, a.shape).astype(np.float32)


def bands_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    ground, level = _paper_and_ink(rng)
    a = _on_ground(mnist_digit(digit, rng), ground, level)
    left, right = rng.randint(4, 7), rng.randint(4, 7)  # up to a quarter each
    a[:, :left] = 1 - a[:, :left]
    a[:, SIDE - right :] = 1 - a[:, SIDE - right :]
    return a + np_rng.normal(0, 0.01, a.shape).astype(np.float32)


def fog_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    contrast = rng.uniform(0.15, 0.35)
    fog = rng.uniform(0.3, 0.6) + contrast * rng.uniform(0.6, 1.2) * _smooth_field(np_rng, rng.randint(2, 4))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    a = fog + sign * contrast * mnist_digit(digit, rng)
    return a + np_rng.normal(0, 0.01, a.shape).astype(np.float32)


def speckle_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> np.ndarray:
    ground, level = _paper_and_ink(rng)
    a = _on_ground(mnist_digit(digit, rng), ground, level)
    hit = np_rng.random(a.shape) < rng.uniform(0.1, 0.2)
    return np.where(hit, np_rng.integers(0, 2, a.shape).astype(np.float32), a)


MAKERS: dict[str, Callable[[int, random.Random, np.random.Generator], np.ndarray]] = {
    "grey": grey_digit,
    "board": board_digit,
    "ruled": ruled_digit,
    "crossed": crossed_digit,
    "bands": bands_digit,
    "fog": fog_digit,
    "speckle": speckle_digit,
}


def png(a: np.ndarray) -> bytes:
    """Grey levels (H, W), clipped to [0, 1] -> an 8-bit grey PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def make_set(kind: str, count: int, seed: int = 0) -> list[Sample]:
    """`count` uploads of one kind, digits in turn 0, 1, ..., 9, 0, ... -> [(PNG bytes, digit)]; the same for the
    same (kind, count, seed)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = random.Random(f"conditions-{kind}-{seed}")
    np_rng = np.random.default_rng([1000 + KINDS.index(kind), seed])
    make = MAKERS[kind]
    return [(png(make(i % 10, rng, np_rng)), i % 10) for i in range(count)]
