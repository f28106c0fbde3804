"""Poor conditions for the reader's training digits: each an MNIST training digit (white on black) as an upload made
in worse conditions shows it, to pass through the service's own pre-processing (model.imaging.to_mnist) like every
other variant.

Six conditions, drawn with their own parameters (not training/evaluation/conditions.py's, which only tests):
- ground: the digit's ink, light or dark, on a uniform ground anywhere from black to white;
- lines: ruled or squared paper (lines fainter than the ink, 3-9 px apart at MNIST's scale) or a few straight lines;
- crossing: one to three strokes through the digit (zigzags, arcs, lines), as thin as or thinner than its own;
- bands: one or both sides in the other polarity, 10-30% of the width each;
- fog: the ground varying slowly, by up to twice as much as the ink departs from it;
- speckle: salt and pepper over 5-25% of the pixels, at MNIST's own 28 px.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

CONDITIONS = ("ground", "lines", "crossing", "bands", "fog", "speckle")
MNIST_SIDE = 28


def in_condition(a: np.ndarray, rng: np.random.Generator, condition: str | None = None) -> np.ndarray:
    """One digit, white on black, float32 (H, W) in [0, 1], under `condition` (default: one drawn at random) ->
    float32 grey levels (H', W') in [0, 1] (speckle: at 28 px, where a salt-and-pepper upload is read)."""
    name = condition if condition is not None else CONDITIONS[int(rng.integers(len(CONDITIONS)))]
    if name not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {name!r}")
    return np.clip(MAKERS[name](np.clip(a, 0.0, 1.0).astype(np.float32), rng), 0.0, 1.0).astype(np.float32)


def _ink_and_ground(
    rng: np.random.Generator, contrast: tuple[float, float], away_from_half: float = 0.0
) -> tuple[float, float]:
    """(ground, ink level): a ground anywhere from black to white (but not within `away_from_half` of half grey), and
    ink departing from it up or down by a contrast in `contrast`, within [0, 1]."""
    ground = float(rng.uniform(0.0, 0.5 - away_from_half))
    ground = 1.0 - ground if rng.random() < 0.5 else ground
    c = min(float(rng.uniform(*contrast)), max(ground, 1.0 - ground))
    up = c <= 1.0 - ground and (c > ground or rng.random() < 0.5)
    return ground, ground + c if up else ground - c


def _laid(ink: np.ndarray, ground: np.ndarray | float, level: float) -> np.ndarray:
    return ground + (level - ground) * ink


def _grain(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return a + rng.normal(0.0, rng.uniform(0.0, 0.02), a.shape).astype(np.float32)


def _ground(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ground, level = _ink_and_ground(rng, (0.2, 1.0))
    return _grain(_laid(a, ground, level), rng)


def _strokes(size: tuple[int, int], lines: list[list[tuple[float, float]]], width: float) -> np.ndarray:
    """Polylines (pixel coordinates) drawn white on black, `width` px, 4x supersampled -> float32 (H, W) in [0, 1]."""
    k = 4
    img = Image.new("L", (size[1] * k, size[0] * k), 0)
    draw = ImageDraw.Draw(img)
    for pts in lines:
        draw.line([(x * k, y * k) for x, y in pts], fill=255, width=max(1, round(width * k)), joint="curve")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BOX), dtype=np.float32) / 255


def _lines(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = a.shape
    scale = w / MNIST_SIDE
    pitch = rng.uniform(3.0, 9.0) * scale
    paths: list[list[tuple[float, float]]] = []
    if rng.random() < 0.8:  # ruled or squared paper
        for y in np.arange(rng.uniform(0, pitch), h, pitch):
            paths.append([(0.0, float(y)), (float(w), float(y))])
        if rng.random() < 0.4:
            for x in np.arange(rng.uniform(0, pitch), w, pitch):
                paths.append([(float(x), 0.0), (float(x), float(h))])
    else:  # a few straight lines anywhere, at any angle
        for _ in range(int(rng.integers(1, 4))):
            angle, at = rng.uniform(0, math.pi), rng.uniform(0.2, 0.8, 2) * (w, h)
            dx, dy = math.cos(angle) * 2 * max(h, w), math.sin(angle) * 2 * max(h, w)
            paths.append([(at[0] - dx, at[1] - dy), (at[0] + dx, at[1] + dy)])
    lines = _strokes(a.shape, paths, rng.uniform(0.6, 1.5) * scale) * rng.uniform(0.25, 0.7)
    ground, level = _ink_and_ground(rng, (0.6, 1.0))
    return _grain(_laid(np.maximum(a, lines), ground, level), rng)


def _crossing(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = a.shape
    paths = []
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.3 else 1):
        turns = int(rng.integers(0, 6))  # 0: a straight stroke
        across = rng.random() < 0.6
        xs = np.linspace(rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0), turns + 2)
        centre, amp, tilt = rng.uniform(0.3, 0.7), rng.uniform(0.03, 0.2), rng.uniform(-0.4, 0.4)
        ys = centre + tilt * (xs - 0.5) + amp * np.where(np.arange(turns + 2) % 2 == 1, 1.0, -1.0) * (turns > 0)
        if rng.random() < 0.3:  # an arc rather than a zigzag
            t = np.linspace(0, 1, 24)
            xs = rng.uniform(0.0, 0.2) + t * rng.uniform(0.6, 1.0)
            ys = centre + rng.uniform(-0.3, 0.3) * np.sin(math.pi * t)
        pairs = zip(xs, ys, strict=True)
        paths.append([(float(x) * w, float(y) * h) if across else (float(y) * w, float(x) * h) for x, y in pairs])
    crossing = _strokes(a.shape, paths, rng.uniform(0.8, 2.2) * w / MNIST_SIDE) * rng.uniform(0.5, 1.0)
    ground, level = _ink_and_ground(rng, (0.5, 1.0))
    return _grain(_laid(np.maximum(a, crossing), ground, level), rng)


def _bands(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ground, level = _ink_and_ground(rng, (0.5, 1.0), away_from_half=0.15)  # a band departs from the ground by 0.3+
    out = _laid(a, ground, level)
    across = rng.random() < 0.2  # now and then at the top and bottom (a scan's margins) rather than the sides
    side = out.shape[0] if across else out.shape[1]
    inverted = np.zeros(side, dtype=bool)
    ends = [(0, int(rng.uniform(0.1, 0.3) * side)), (side - int(rng.uniform(0.1, 0.3) * side), side)]
    for start, stop in ends if rng.random() < 0.7 else [ends[int(rng.integers(2))]]:
        inverted[start:stop] = True
    mask = inverted[:, None] if across else inverted[None, :]
    return _grain(np.where(mask, 1.0 - out, out).astype(np.float32), rng)


def _fog(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = a.shape
    contrast = float(rng.uniform(0.12, 0.5))
    cells = int(rng.integers(2, 5))
    field = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    fog = rng.uniform(0.2, 0.8) + contrast * rng.uniform(0.3, 2.0) * field
    sign = 1.0 if rng.random() < 0.5 else -1.0
    fog = np.clip(fog, contrast if sign < 0 else 0.0, 1.0 - contrast if sign > 0 else 1.0)  # room for the ink
    return _grain(fog + sign * contrast * a, rng)


def _speckle(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    small = np.asarray(Image.fromarray(a).resize((MNIST_SIDE, MNIST_SIDE), Image.Resampling.BOX), dtype=np.float32)
    ground, level = _ink_and_ground(rng, (0.6, 1.0))
    out = _laid(small, ground, level)
    hit = rng.random(out.shape) < rng.uniform(0.05, 0.25)
    return np.where(hit, (rng.random(out.shape) < 0.5).astype(np.float32), out)


MAKERS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "ground": _ground,
    "lines": _lines,
    "crossing": _crossing,
    "bands": _bands,
    "fog": _fog,
    "speckle": _speckle,
}
