"""The figures evaluation computes from features and images: Frechet distance, spread, copying distance, slant,
calibration error. Pure functions of tensors."""

from __future__ import annotations

import torch
from torch import Tensor

CALIBRATION_BINS = 15


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) (Heusel et al. 2017, eq. 6 / FID)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def within_class_spread(features: Tensor, labels: Tensor) -> float:
    """Sum over classes of the trace of the features' covariance within the class."""
    return sum(float(torch.cov(features[labels == c].double().T).trace()) for c in labels.unique().tolist())


def nearest_distance(x: Tensor, reference: Tensor) -> float:
    """The median over x's rows of the Euclidean distance to the nearest row of reference. (N, P), (M, P)"""
    return float(
        torch.cat([torch.cdist(x[i : i + 250], reference).min(dim=1).values for i in range(0, len(x), 250)]).median()
    )


def slant(images: Tensor) -> Tensor:
    """The slant of each image: how far its ink leans right per unit of height, from its second moments
    (-mu11 / mu02 about the centre of mass; 0 is upright). (N, 1, H, W) -> (N,)"""
    x = images.flatten(0, 1).double()  # (N, H, W)
    h, w = x.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    mass = x.sum(dim=(1, 2)).clamp(min=1e-9)
    cy = (x * rows).sum(dim=(1, 2)) / mass
    cx = (x * cols).sum(dim=(1, 2)) / mass
    dy, dx = rows - cy[:, None, None], cols - cx[:, None, None]
    return -(x * dx * dy).sum(dim=(1, 2)) / (x * dy * dy).sum(dim=(1, 2)).clamp(min=1e-9)


def correlation(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def calibration_error(probs: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error of the top probability (Guo et al. 2017, eq. 3): over equal-width confidence
    bins, the gap between accuracy and mean confidence, weighted by the bin's share of the images. 0 is perfect."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence.double() * bins).long().clamp(max=bins - 1)
    total = 0.0
    for b in which.unique().tolist():
        rows = which == b
        total += float(rows.double().mean() * (correct[rows].mean() - confidence[rows].double().mean()).abs())
    return total
