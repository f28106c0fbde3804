"""The round-pen stroke renderer: strokes in a unit box drawn anti-aliased into a Pillow image. Shared by the test
sets (training/evaluation/testsets.py) and the reader's letterforms (training/reader/letterforms.py), which may not
import each other."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

Point = tuple[float, float]
Stroke = list[Point]


def render_strokes(
    strokes: Sequence[Stroke],
    *,
    size: tuple[int, int],
    box: tuple[float, float, float],
    width: float,
    ink: int = 0,
    paper: int = 255,
    supersample: int = 2,
) -> Image.Image:
    """Strokes in a unit box, drawn with a round pen `width` px wide into an L image of `size`, the box's top-left
    at (box[0], box[1]) and `box[2]` px tall; anti-aliased by drawing `supersample` times larger."""
    k = supersample
    img = Image.new("L", (size[0] * k, size[1] * k), paper)
    draw = ImageDraw.Draw(img)
    left, top, height = box
    w = max(1, round(width * k))
    for stroke in strokes:
        pts = [((left + x * height) * k, (top + y * height) * k) for x, y in stroke]
        if len(pts) > 1:
            draw.line(pts, fill=ink, width=w, joint="curve")
        for px, py in (pts[0], pts[-1]):  # round caps
            draw.ellipse((px - w / 2, py - w / 2, px + w / 2, py + w / 2), fill=ink)
    return img.resize(size, Image.Resampling.BOX) if k > 1 else img
