"""What an upload is made into before the encoder sees it, by the model directory's `preprocessing`
(model/manifest.py): "mnist" is model/imaging.py's to_mnist (digits: cropped to the ink, centred by mass); "frame" is
to_frame (items that fill their frame, as Fashion-MNIST's do: the whole picture kept, fitted into the frame)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.imaging import to_mnist
from model.ink import border_background, grey_levels, light_on_dark, stretched
from model.manifest import Preprocessing


def preprocess(grey: Tensor, preprocessing: Preprocessing, shape: tuple[int, int]) -> Tensor:
    """(H, W) grey levels in [0, 1] -> float32 (1, h, w) as the model's training images are, shape = (h, w).
    "mnist" makes 28x28 images only (model/manifest.py refuses a directory that asks it for another shape)."""
    if preprocessing == "frame":
        return to_frame(grey, shape)
    return to_mnist(grey)


def to_frame(grey: Tensor, shape: tuple[int, int]) -> Tensor:
    """(H, W) grey levels in [0, 1], either polarity, any size -> float32 (1, h, w): the whole picture, light on
    dark, fitted into the h x w frame keeping its aspect ratio, centred, padded with background.

    The polarity and the background are decided as to_mnist decides them for an even ground (the border's median is
    the background; the ink is the side the picture departs to by the contrast rule); the picture is then stretched
    so that the background is 0 and its brightest point 1. Raises ImageError("blank") when nothing stands out from
    the background.
    """
    a = grey_levels(grey)
    a, background, peak = light_on_dark(a, border_background(a)[1])
    blank = "nothing found: the image has nothing that stands out from its background"
    a = stretched(a, background, peak, blank).astype(np.float32)
    frame_h, frame_w = shape
    h, w = a.shape
    s = min(frame_h / h, frame_w / w)
    size = (min(frame_h, max(1, round(h * s))), min(frame_w, max(1, round(w * s))))
    if size != (h, w):
        x = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        a = F.interpolate(x, size=size, mode="bilinear", antialias=s < 1, align_corners=False)[0, 0].clamp(0, 1).numpy()
    top, left = (frame_h - size[0]) // 2, (frame_w - size[1]) // 2
    out = np.zeros((1, frame_h, frame_w), dtype=np.float32)
    out[0, top : top + size[0], left : left + size[1]] = a
    return torch.from_numpy(out)
