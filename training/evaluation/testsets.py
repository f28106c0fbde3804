"""Digits that are not MNIST, made from a seed: what people draw on the page, type, scan and photograph.

Three kinds, each a list of (upload bytes, digit), the same for the same seed and count:
- drawn: single strokes on the page's 280 px pad (black on white PNG), from hand-written skeletons of each digit
  in several letterforms (1 with and without flag and foot, 7 with and without a bar, 4 open and closed, open and
  closed loops), slanted, rotated, wobbled, at pen widths 6-32 px, sampled fast (few points) or slow (many, with
  tremor);
- typed: the digit in one of Debian's handwriting-style or ordinary fonts, at several sizes and angles;
- photographed: drawn strokes in pencil (grey, thin) on paper with texture, uneven light and a shadow, small
  anywhere in a 1024x768 JPEG; and scanned: the same at low resolution (coarse, blurred, JPEG), scaled up.
These sets only ever test (evaluation, benchmarks, tests): the model and its label rule train on MNIST alone.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from training.strokes import Point, Stroke, render_strokes

Sample = tuple[bytes, int]

PAD = 280  # the page's drawing pad, in canvas pixels
KINDS = ("drawn", "typed", "scanned", "photographed")

# Debian's fonts (package: files). Handwriting-style first; the ordinary ones are the fonts a document uses.
HANDWRITING_FONTS = {
    "fonts-comic-neue": ["opentype/comic-neue/ComicNeue-Regular.otf", "opentype/comic-neue/ComicNeue-BoldItalic.otf"],
    "fonts-dkg-handwriting": ["truetype/fifthhorseman/dkg.ttf", "truetype/fifthhorseman/dkgBd.ttf"],
    "fonts-breip": ["truetype/breip/Breip.ttf"],
    "fonts-bwht": ["opentype/bwht/BecauseWeBuild-Regular.otf", "opentype/bwht/BecauseWeLearn-Regular.otf"],
    "fonts-dancingscript": ["opentype/dancingscript/DancingScript-Regular.otf"],
    "fonts-femkeklaver": ["truetype/femkeklaver/femkeklaver.ttf"],
    "fonts-humor-sans": ["truetype/humor-sans/Humor-Sans.ttf"],
    "fonts-kristi": ["truetype/kristi/Kristi.ttf"],
    "fonts-kaushanscript": ["opentype/kaushanscript/KaushanScript-Regular.otf"],
}
ORDINARY_FONTS = {
    "fonts-dejavu-core": ["truetype/dejavu/DejaVuSans.ttf", "truetype/dejavu/DejaVuSerif-Bold.ttf"],
    "fonts-liberation2": ["truetype/liberation2/LiberationSans-Regular.ttf",
                          "truetype/liberation2/LiberationSerif-Italic.ttf"],
    "fonts-freefont-ttf": ["truetype/freefont/FreeSans.ttf", "truetype/freefont/FreeMonoBold.ttf"],
    "fonts-go": ["fonts-go/Go-Medium-Italic.ttf", "fonts-go/Go-Bold.ttf"],
}  # fmt: skip
FONT_ROOT = Path("/usr/share/fonts")


def font_packages() -> list[str]:
    """The Debian packages the typed set needs (what .ci/run installs)."""
    return sorted({*HANDWRITING_FONTS, *ORDINARY_FONTS})


def available_fonts(root: Path = FONT_ROOT) -> list[Path]:
    return [root / f for files in (*HANDWRITING_FONTS.values(), *ORDINARY_FONTS.values()) for f in files
            if (root / f).is_file()]  # fmt: skip


# ---- Skeletons: each digit as strokes in a unit box (x right, y down, the digit 1 tall and about 0.6 wide) ------


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> Stroke:
    """An elliptical arc from angle a0 to a1 in degrees (0 = right, 90 = down: clockwise on the page)."""
    n = max(8, int(abs(a1 - a0) / 6))
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(a0, a1, n)]  # fmt: skip


def _bezier(p0: Point, p1: Point, p2: Point, n: int = 24) -> Stroke:
    return [((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t * t * p2[0],
             (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t * t * p2[1]) for t in np.linspace(0, 1, n)]  # fmt: skip


def _eight_in_one() -> Stroke:
    ts = np.linspace(0, 2 * math.pi, 90)
    return [(0.5 + 0.24 * math.sin(2 * t), 0.5 - 0.45 * math.cos(t)) for t in ts]


# A loop continues the way the pen was going (a 6's stem comes down the left and its loop turns along the bottom).
SKELETONS: dict[int, list[list[Stroke]]] = {
    0: [[_arc(0.5, 0.5, 0.3, 0.45, -90, 270)], [_arc(0.5, 0.5, 0.28, 0.45, -100, 225)],
        [_arc(0.5, 0.5, 0.3, 0.45, -70, 310)]],
    1: [[[(0.5, 0.05), (0.5, 0.95)]], [[(0.34, 0.22), (0.52, 0.05), (0.52, 0.95)]],
        [[(0.34, 0.22), (0.52, 0.05), (0.52, 0.95)], [(0.3, 0.95), (0.74, 0.95)]]],
    2: [[[*_arc(0.5, 0.3, 0.28, 0.25, 200, 400), (0.18, 0.95), (0.84, 0.95)]],
        [_arc(0.5, 0.3, 0.3, 0.26, 190, 380) + _bezier((0.78, 0.39), (0.5, 0.7), (0.16, 0.95)) + [(0.86, 0.93)]]],
    3: [[_arc(0.48, 0.27, 0.27, 0.22, 200, 450) + _arc(0.48, 0.72, 0.3, 0.24, 270, 520)],
        [[(0.2, 0.05), (0.78, 0.05), (0.42, 0.42), *_arc(0.48, 0.7, 0.3, 0.26, 250, 520)]]],
    4: [[[(0.2, 0.05), (0.14, 0.62), (0.86, 0.62)], [(0.66, 0.05), (0.66, 0.95)]],
        [[(0.66, 0.95), (0.66, 0.05), (0.12, 0.64), (0.88, 0.64)]],
        [[(0.58, 0.05), (0.14, 0.64), (0.86, 0.64)], [(0.66, 0.35), (0.66, 0.95)]]],
    5: [[[(0.78, 0.05), (0.3, 0.05), (0.25, 0.45), *_arc(0.48, 0.68, 0.3, 0.27, 235, 510)]],
        [[(0.3, 0.05), (0.25, 0.45), *_arc(0.48, 0.68, 0.3, 0.27, 235, 510)], [(0.3, 0.05), (0.8, 0.05)]]],
    6: [[_bezier((0.72, 0.05), (0.18, 0.2), (0.22, 0.7)) + _arc(0.5, 0.7, 0.28, 0.25, 180, -180)],
        [_bezier((0.7, 0.05), (0.2, 0.25), (0.22, 0.72)) + _arc(0.5, 0.7, 0.28, 0.25, 180, -140)]],
    7: [[[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)]],
        [[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)], [(0.35, 0.5), (0.8, 0.5)]],
        [[(0.15, 0.1), (0.85, 0.05), *_bezier((0.85, 0.05), (0.5, 0.45), (0.45, 0.95))]]],
    8: [[_arc(0.5, 0.27, 0.22, 0.22, 0, 360), _arc(0.5, 0.72, 0.28, 0.25, -90, 270)], [_eight_in_one()]],
    9: [[[*_arc(0.45, 0.3, 0.27, 0.24, 0, -360), (0.66, 0.95)]],
        [_arc(0.45, 0.3, 0.27, 0.24, 0, -360) + _bezier((0.72, 0.3), (0.72, 0.8), (0.36, 0.95))],
        [[*_arc(0.45, 0.3, 0.27, 0.24, 20, -300), (0.72, 0.3), (0.7, 0.95)]]],
}  # fmt: skip


def _resample(stroke: Stroke, spacing: float) -> Stroke:
    """Points every `spacing` along the stroke (a pointer reports positions at a steady rate: fast = far apart)."""
    pts = np.asarray(stroke, dtype=np.float64)
    seg = np.hypot(*np.diff(pts, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(seg)])
    if along[-1] == 0:
        return [(float(pts[0, 0]), float(pts[0, 1]))]
    at = np.append(np.arange(0, along[-1], spacing), along[-1])
    return list(zip(np.interp(at, along, pts[:, 0]), np.interp(at, along, pts[:, 1]), strict=True))


def hand_strokes(digit: int, rng: random.Random) -> list[Stroke]:
    """One person's way of writing `digit`: a letterform, slant, rotation, proportions, wobble and speed."""
    strokes = rng.choice(SKELETONS[digit])
    slant = rng.uniform(-0.35, 0.25)  # the top leans right when positive
    angle = math.radians(rng.uniform(-8, 8))
    widen = rng.uniform(0.75, 1.3)
    fast = rng.random() < 0.5
    spacing = rng.uniform(0.06, 0.14) if fast else rng.uniform(0.01, 0.025)
    wobble = [(rng.uniform(0, 0.035), rng.uniform(1, 3), rng.uniform(0, 2 * math.pi)) for _ in range(4)]
    tremor = 0.0 if fast else rng.uniform(0.0, 0.006)
    out = []
    for stroke in strokes:
        pts = []
        for x, y in _resample(stroke, spacing):
            # Smooth, hand-sized wobble: a few low-frequency waves over the box.
            dx = sum(a * math.sin(f * 2 * math.pi * y + p) for a, f, p in wobble[:2])
            dy = sum(a * math.sin(f * 2 * math.pi * x + p) for a, f, p in wobble[2:])
            x, y = 0.5 + (x - 0.5) * widen + dx + rng.gauss(0, tremor), y + dy + rng.gauss(0, tremor)
            x += slant * (0.5 - y)
            c, s = math.cos(angle), math.sin(angle)
            pts.append((0.5 + c * (x - 0.5) - s * (y - 0.5), 0.5 + s * (x - 0.5) + c * (y - 0.5)))
        out.append(pts)
    return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _place(rng: random.Random, canvas: tuple[int, int], height: float) -> tuple[float, float, float]:
    """A box `height` px tall at a random place where the whole digit fits in the canvas."""
    w, h = canvas
    margin = 0.45 * height  # the wobbled, slanted digit reaches past its box's 0..1 a little
    left = rng.uniform(margin * 0.5, max(margin * 0.5, w - 1.1 * height))
    top = rng.uniform(margin * 0.2, max(margin * 0.2, h - 1.2 * height))
    return left, top, height


def drawn_digit(digit: int, rng: random.Random) -> bytes:
    """A digit drawn on the page's pad: black on white, PAD x PAD PNG, pen 6-32 px."""
    strokes = hand_strokes(digit, rng)
    height = rng.uniform(120, 230)
    return _png(render_strokes(strokes, size=(PAD, PAD), box=_place(rng, (PAD, PAD), height),
                               width=rng.uniform(6, 32)))  # fmt: skip


def typed_digit(digit: int, rng: random.Random, fonts: Sequence[Path]) -> bytes:
    """The digit in a font, 40-200 px, turned up to 15 degrees, dark on light (PNG or JPEG)."""
    font = ImageFont.truetype(str(rng.choice(fonts)), size=rng.randint(40, 200))
    text = str(digit)
    x0, y0, x1, y1 = font.getbbox(text)
    side = int(max(x1 - x0, y1 - y0) * rng.uniform(1.4, 2.2)) + 8
    img = Image.new("L", (side, side), 255)
    ImageDraw.Draw(img).text(((side - (x1 - x0)) / 2 - x0, (side - (y1 - y0)) / 2 - y0), text, font=font, fill=0)
    img = img.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC, fillcolor=255)
    if rng.random() < 0.3:
        return _jpeg(img.convert("RGB"), rng.randint(60, 95))
    return _png(img)


def _paper(rng: random.Random, size: tuple[int, int], np_rng: np.random.Generator) -> np.ndarray:
    """Paper under uneven light: brightness (H, W) in [0, 1] with a light gradient, a vignette, a soft shadow
    across part of the sheet, and fibre texture."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / w - 0.5, yy / h - 0.5
    gx, gy = rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35)
    light = rng.uniform(0.72, 0.95) + gx * u + gy * v - rng.uniform(0.1, 0.35) * (u * u + v * v)
    if rng.random() < 0.7:  # a shadow (a hand, a phone) with a soft edge
        a = rng.uniform(0, 2 * math.pi)
        edge = math.cos(a) * u + math.sin(a) * v - rng.uniform(0.0, 0.4)
        light -= rng.uniform(0.1, 0.3) / (1 + np.exp(-edge / rng.uniform(0.02, 0.08)))
    texture = np_rng.normal(0, 1, (h // 4 + 1, w // 4 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture).resize((w, h), Image.Resampling.BILINEAR))
    light += rng.uniform(0.01, 0.03) * texture + np_rng.normal(0, rng.uniform(0.004, 0.015), (h, w))
    return np.clip(light, 0.05, 1.0)


def photographed_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> bytes:
    """A pencil digit on paper, 60-220 px tall anywhere in a 1024x768 phone-style RGB JPEG, under uneven light."""
    size = (1024, 768)
    height = rng.uniform(60, 220)
    strokes = render_strokes(hand_strokes(digit, rng), size=size, box=_place(rng, size, height),
                             width=max(2.0, height * rng.uniform(0.025, 0.07)), ink=255, paper=0)  # fmt: skip
    if rng.random() < 0.6:  # slightly out of focus
        strokes = strokes.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    pencil = np.asarray(strokes, dtype=np.float32) / 255 * rng.uniform(0.35, 0.75)  # grey, not black
    grey = _paper(rng, size, np_rng) * (1 - pencil)
    tint = np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.82, 0.97)], dtype=np.float32)  # warm light
    rgb = np.clip(grey[..., None] * tint * 255, 0, 255).astype(np.uint8)
    return _jpeg(Image.fromarray(rgb, "RGB"), rng.randint(60, 92))


def scanned_digit(digit: int, rng: random.Random, np_rng: np.random.Generator) -> bytes:
    """A digit scanned at low resolution: written 10-18 px tall on grey paper, blurred, JPEG'd, scaled up 4-10x."""
    height = rng.uniform(10, 18)
    side = int(height * rng.uniform(1.5, 2.2))
    strokes = render_strokes(hand_strokes(digit, rng), size=(side, side), box=_place(rng, (side, side), height),
                             width=height * rng.uniform(0.07, 0.15), ink=255, paper=0, supersample=8)  # fmt: skip
    strokes = strokes.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    pencil = np.asarray(strokes, dtype=np.float32) / 255 * rng.uniform(0.5, 0.9)
    paper = rng.uniform(0.75, 0.95) + np_rng.normal(0, rng.uniform(0.005, 0.03), (side, side))
    grey = np.clip(paper * (1 - pencil) * 255, 0, 255).astype(np.uint8)
    small = Image.open(io.BytesIO(_jpeg(Image.fromarray(grey, "L"), rng.randint(40, 80))))
    scale = rng.randint(4, 10)
    big = small.resize((side * scale, side * scale), rng.choice([Image.Resampling.NEAREST, Image.Resampling.BILINEAR]))
    return _png(big)


def make_set(kind: str, count: int, seed: int = 0, fonts: Sequence[Path] | None = None) -> list[Sample]:
    """`count` uploads of one kind, digits in turn 0, 1, ..., 9, 0, ... -> [(bytes, digit)]; the same for the
    same (kind, count, seed). "typed" needs fonts (default: those of FONT_ROOT's that are installed)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = random.Random(f"{kind}-{seed}")
    np_rng = np.random.default_rng([KINDS.index(kind), seed])
    make: Callable[[int], bytes]
    if kind == "drawn":
        make = lambda d: drawn_digit(d, rng)  # noqa: E731
    elif kind == "typed":
        fonts = list(fonts) if fonts is not None else available_fonts()
        if not fonts:
            raise FileNotFoundError(f"no fonts for the typed set under {FONT_ROOT} (Debian: {font_packages()})")
        make = lambda d: typed_digit(d, rng, fonts)  # noqa: E731
    elif kind == "photographed":
        make = lambda d: photographed_digit(d, rng, np_rng)  # noqa: E731
    else:
        make = lambda d: scanned_digit(d, rng, np_rng)  # noqa: E731
    return [(make(i % 10), i % 10) for i in range(count)]
