"""An upload's ground and ink, the part of pre-processing every kind shares (model/imaging.py's to_mnist,
model/preprocessing.py's to_frame): salt and pepper taken out, the background read from the border, the polarity
from the side the ink departs to, and the contrast rule that tells ink from ground."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from model.uploads import ImageError

MIN_CONTRAST = 0.1  # the contrast rule: ink departs from its background by at least this many grey levels
# Salt and pepper: an image at most IMPULSE_SIDE px on its long side with more than IMPULSE_SHARE of its pixels lone
# extremes (departing by over IMPULSE_LEVEL from all 8 neighbours, the same way) is read through a 3x3 median.
IMPULSE_SIDE = 64
IMPULSE_SHARE = 0.01
IMPULSE_LEVEL = 0.3
IMPULSE_VARIATION = 0.1  # mean |row step| over the image's range: at most 0.115 on MNIST's digits, speckle's more


def grey_levels(grey: Tensor) -> np.ndarray:
    """(H, W) grey levels in [0, 1] as float32 numpy, salt and pepper taken out of a small image (speckled).

    In numpy, float32 throughout, but for the resampling (torch's antialiased bilinear): a selection (the median),
    elementwise IEEE arithmetic and comparisons give the bits torch gives, without torch's per-operation overhead on
    an image this small (docs/performance.md)."""
    if grey.ndim != 2 or grey.numel() == 0:
        raise ImageError("undecodable", f"expected one 2-D grey image, got shape {tuple(grey.shape)}")
    a = grey.float().numpy()
    if max(a.shape) <= IMPULSE_SIDE and speckled(a, a.max() - a.min()):
        a = median3(a)
    return a


def border_background(a: np.ndarray) -> tuple[np.ndarray, np.floating]:
    """a's border pixels, and their median: the background of an even ground."""
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    middle = (border.size - 1) // 2  # torch's median of an even count is the lower of the two middle values
    return border, np.partition(border, middle)[middle]


def light_on_dark(a: np.ndarray, background: np.floating) -> tuple[np.ndarray, np.floating, np.floating]:
    """a on an even ground made light ink on a dark one, by the side its ink departs to (dark_ink): -> (a,
    background, peak), the ink's strongest level."""
    darkest, lightest = a.min(), a.max()
    if dark_ink(a, background, darkest, lightest):
        return 1.0 - a, 1.0 - background, 1.0 - darkest
    return a, background, lightest


def stretched(a: np.ndarray, background: np.floating, peak: np.floating, blank: str) -> np.ndarray:
    """a stretched so that the background is 0 and the peak 1, clipped; ImageError("blank", blank) when the peak does
    not stand out from the background by the contrast rule (MIN_CONTRAST)."""
    if peak - background < MIN_CONTRAST:
        raise ImageError("blank", blank)
    return np.clip((a - background) / (peak - background), 0.0, 1.0)


def departures(d: np.ndarray) -> tuple[float, float]:
    """(ink above, ink below): the sums of departures d beyond the contrast rule, up and down."""
    rule = np.float32(MIN_CONTRAST)
    above = np.clip(d - rule, 0.0, None).sum(dtype=np.float64)
    below = np.clip(-rule - d, 0.0, None).sum(dtype=np.float64)
    return float(above), float(below)


def dark_ink(a: np.ndarray, background: np.floating, darkest: np.floating, lightest: np.floating) -> bool:
    """Whether the ink is darker than its uniform background: the side the image departs to by the contrast rule,
    or, where it departs both ways (noise, a scan's grain), the side with more ink beyond the rule. Not the
    background's level: chalk on a grey board is light ink on a ground lighter than half grey."""
    up, down = lightest - background, background - darkest
    if min(up, down) < MIN_CONTRAST:
        return bool(down > up)
    above, below = departures(a - background)
    return below > above


def speckled(a: np.ndarray, span: np.floating) -> bool:
    """Whether more than IMPULSE_SHARE of a's pixels are lone extremes (salt and pepper). Checked only where the
    image varies along its rows by more than IMPULSE_VARIATION of its range per pixel, as speckle makes it (a digit's
    strokes alone seldom do): most uploads pay for that mean alone."""
    if min(a.shape) < 3:
        return False
    steps = np.abs(a[:, 1:] - a[:, :-1])
    if float(steps.sum()) <= IMPULSE_VARIATION * float(span) * steps.size:
        return False
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    around = np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)])
    level = np.float32(IMPULSE_LEVEL)
    lone = (a - around.max(axis=0) > level) | (around.min(axis=0) - a > level)
    return bool(lone.mean() > IMPULSE_SHARE)


def median3(a: np.ndarray) -> np.ndarray:
    """a through a 3x3 median (edges repeated)."""
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(a, 1, mode="edge"), (3, 3))
    return np.median(windows.reshape(*a.shape, 9), axis=-1).astype(np.float32)
