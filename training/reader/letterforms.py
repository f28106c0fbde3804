"""European letterforms for MNIST's 1s: a flag, and sometimes a foot, drawn onto a share of them (the reader trains on
them so that a flagged 1 is not read as a 7: docs/quality.md)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from training.strokes import render_strokes

FLAG_SHARE = 0.5  # training 1s given a flag, new each epoch (docs/quality.md: why)
FOOT_SHARE = 0.35  # flagged 1s given a foot as well


def letterforms(images: Tensor, labels: Tensor, g: torch.Generator) -> Tensor:
    """uint8 (N, 28, 28) MNIST digits with FLAG_SHARE of the 1s written the European way: a flag, a short stroke
    from the top of the stem down to the left, and for FOOT_SHARE of those a foot, a bar under the stem. MNIST's 1s
    are nearly all bare strokes, so a reader trained on them alone takes a flagged 1 for a 7. The flag leaves the
    stem at 35-75 degrees and points at least 25 degrees below the horizontal: a 1 leaning so far that no such flag
    fits keeps its bare form (a longer, flatter flag on a leaning stem is a 7). Drawn 4x larger and box-filtered
    down, as wide as the stem's ink per row, so the new strokes are anti-aliased like MNIST's."""
    out = images.clone()
    ones = (labels == 1).nonzero().flatten().tolist()
    u = torch.rand(len(ones), 5, generator=g).tolist()  # drawn for every 1, so each 1's form is one draw
    cols = np.arange(28, dtype=np.float64)
    for i, (flag, size, turn, foot, reach) in zip(ones, u, strict=True):
        a = images[i].numpy()
        rows = np.nonzero(a.max(axis=1) > 127)[0]
        if flag >= FLAG_SHARE or len(rows) < 8:
            continue
        top, bottom = int(rows[0]), int(rows[-1])
        height = bottom - top + 1
        pen = max(1.0, float((a > 127).sum()) / height)
        tx = float(np.average(cols, weights=a[top : top + 3].sum(axis=0) + 1e-6))
        bx = float(np.average(cols, weights=a[bottom - 2 : bottom + 1].sum(axis=0) + 1e-6))
        stem = math.atan2(height, bx - tx)  # its direction from the top; pi/2 when upright, y down
        lo, hi = stem + math.radians(35), min(stem + math.radians(75), math.radians(155))
        if lo >= hi:
            continue
        angle, length = lo + (hi - lo) * turn, height * (0.18 + 0.12 * size)
        strokes = [[(tx, top + 0.5), (tx + length * math.cos(angle), top + 0.5 + length * math.sin(angle))]]
        if foot < FOOT_SHARE:
            half = height * (0.15 + 0.1 * reach)
            strokes.append([(bx - half, bottom + 0.5), (bx + half, bottom + 0.5)])
        # white on black in pixel coordinates (a unit box 1 px tall at the origin), 4x supersampled
        pen_ink = render_strokes(
            strokes, size=(28, 28), box=(0.0, 0.0, 1.0), width=pen, ink=255, paper=0, supersample=4
        )
        out[i] = torch.from_numpy(np.maximum(a, np.asarray(pen_ink)))
    return out
