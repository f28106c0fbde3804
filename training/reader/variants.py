"""MNIST digits varied the way people's digits vary (geometry, stroke width, scans and photos), each passed through
the service's own pre-processing (model.imaging.to_mnist), so that the reader learns what /encode will show it."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from model.imaging import to_mnist
from model.uploads import ImageError
from training.reader.conditions import in_condition

CANVAS = 80  # the side the geometry is varied at (the 28 px digit padded to 40, scaled 2x)
PLAIN_SHARE = 0.3  # varied digits whose strokes and grey levels are left as MNIST's
# Of the others, those shown in a poor condition (training/reader/conditions.py: grounds, ruled paper, crossings,
# bands, fog, speckle) instead of scanned or photographed (_degrade).
CONDITION_SHARE = 0.3


def varied(images: Tensor, g: torch.Generator, seed: int, plain_share: float = PLAIN_SHARE) -> Tensor:
    """uint8 (N, 28, 28) MNIST digits -> float32 (N, 1, 28, 28): each digit slanted, turned, stretched, warped,
    then, but for `plain_share` of them, thickened or thinned, and either (CONDITION_SHARE of those) put in a poor
    condition or maybe coarsened, blurred, faded or grained; all pre-processed as /encode does. Deterministic for a
    generator state and seed."""
    n = images.shape[0]
    x = F.pad(images.unsqueeze(1).float() / 255, (6, 6, 6, 6))
    x = F.interpolate(x, size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)
    x = _warp(x, g)
    plain = torch.rand(n, generator=g) < plain_share
    x = torch.where(plain[:, None, None, None], x, _stroke_width(x, g))
    out = torch.empty(n, 1, 28, 28)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if plain[i]:
            grey = x[i, 0].numpy()
        elif rng.random() < CONDITION_SHARE:
            grey = in_condition(x[i, 0].numpy(), rng)
        else:
            grey = _degrade(x[i, 0].numpy(), rng)
        try:
            out[i] = to_mnist(torch.from_numpy(grey))
        except ImageError:  # faded to nothing: the plain digit instead
            out[i] = to_mnist(images[i].float() / 255)
    return out


def _warp(x: Tensor, g: torch.Generator) -> Tensor:
    """Rotation up to 10 degrees, slant (shear up to 0.3), width 0.7-1.25x, height 0.85-1.15x, and a smooth
    elastic wobble, in one resampling. (Up to 15 degrees and 0.45, the 7's bar tilts into a flag and flagged 1s
    are read as 7s: docs/quality.md.)"""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=g) * 2 - 1
    angle, shear = u[:, 0] * math.radians(10), u[:, 1] * 0.3
    sx, sy = 1 / (0.975 + u[:, 2] * 0.275), 1 / (1 + u[:, 3] * 0.15)  # output -> input coordinates
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros(n)
    theta = torch.stack(
        [torch.stack([cos * sx, (shear - sin) * sx, zero], 1), torch.stack([sin * sy, cos * sy, zero], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, CANVAS, CANVAS], align_corners=False)
    wobble = torch.randn(n, 2, 4, 4, generator=g) * 0.035
    grid = grid + F.interpolate(wobble, size=(CANVAS, CANVAS), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _stroke_width(x: Tensor, g: torch.Generator) -> Tensor:
    """Each digit's strokes: as they are, thickened (a pen: 1-3 px more on each side at this scale), thinned to a
    fine line (a pencil, a thin pen), made crisp (a pen's hard edge), or outlined (a bold stroke drawn as its two
    edges, as outline and inline fonts draw it)."""
    choice = torch.randint(0, 7, (x.shape[0],), generator=g)
    out = x.clone()
    for k, size in ((1, 3), (2, 5), (3, 7)):
        rows = choice == k
        if rows.any():
            out[rows] = F.max_pool2d(x[rows], size, stride=1, padding=size // 2)
    thin = choice == 4
    if thin.any():
        level = 0.35 + 0.4 * torch.rand(int(thin.sum()), 1, 1, 1, generator=g)
        out[thin] = ((x[thin] - level) / (1 - level)).clamp(0, 1)
    crisp = choice == 5
    if crisp.any():
        out[crisp] = (x[crisp] > 0.3 + 0.4 * torch.rand(int(crisp.sum()), 1, 1, 1, generator=g)).float()
    outline = choice == 6
    if outline.any():
        out[outline] = _outline(x[outline], g)
    return out


def _outline(x: Tensor, g: torch.Generator) -> Tensor:
    """Digits (N, 1, CANVAS, CANVAS) made bold (2-3 px more on each side), then hollowed: what is left is a rim
    2-3 px wide on each side of where the bold stroke was."""
    bold = torch.empty_like(x)
    sizes = torch.randint(0, 2, (x.shape[0],), generator=g)
    for k, size in enumerate((5, 7)):
        rows = sizes == k
        if rows.any():
            bold[rows] = F.max_pool2d(x[rows], size, stride=1, padding=size // 2)
    bold = ((bold - 0.3) / 0.4).clamp(0, 1)
    inner = 1 - F.max_pool2d(1 - bold, 5, stride=1, padding=2)  # eroded by 2 px
    return (bold - inner).clamp(0, 1)


def _degrade(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One digit (white on black, CANVAS px) as a scan or a photo could show it: coarsened, blurred, faded, grainy,
    either polarity."""
    if rng.random() < 0.3:  # a coarse scan scaled up
        side = int(rng.integers(14, 34))
        img = Image.fromarray(a).resize((side, side), Image.Resampling.BOX)
        up = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
        a = np.asarray(img.resize((CANVAS, CANVAS), up), dtype=np.float32)
    if rng.random() < 0.3:
        img = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))  # Pillow blurs 8-bit images
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5))), dtype=np.float32) / 255
    a = np.clip(a, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.4:  # faded ink on a grey ground, with grain
        ink, ground = rng.uniform(0.25, 0.9), rng.uniform(0.0, 0.2)
        a = ground + ink * a + rng.normal(0, rng.uniform(0.0, 0.025), a.shape)
    if rng.random() < 0.5:
        a = 1.0 - a
    return np.clip(a, 0.0, 1.0).astype(np.float32)
