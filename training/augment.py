"""Batched random affine augmentation on the device (no per-image host work)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_affine(x: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Shift up to 2*strength px, rotate up to 10*strength degrees, scale by 1 +- 0.1*strength. (N,1,H,W) -> same."""
    if strength <= 0:
        return x
    n, _, h, _ = x.shape
    # Drawn on the CPU (where `generator` lives) and moved: the same numbers whatever device x is on.
    u = torch.rand(n, 4, generator=generator).to(x.device) * 2 - 1  # (N, 4) in [-1, 1]
    angle = u[:, 0] * math.radians(10) * strength
    scale = 1 + u[:, 1] * 0.1 * strength
    shift = u[:, 2:] * (2 * strength) * 2 / h  # pixels -> normalised coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
