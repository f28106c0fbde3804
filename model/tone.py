"""Tone curves: the grey levels the model draws matched, class by class, to the training images'.

The decoder draws each pixel's Bernoulli mean, a smooth grey where real images have a crisp edge or a texture: its
grey levels are not distributed as real images' are (more mid-greys, fewer whites). A tone curve per class is the
monotone map that sends the quantiles of the levels the model draws for that class (its own samples, at its sampling
temperature) onto the quantiles of that class's training images (histogram matching): pixels keep their order, so
shapes and the hand are kept, and the levels become real ones. Fitted on training images alone. What the service
draws (and evaluation judges) is the curve applied to the decoder's means; the likelihoods, and the label rule built
on them, are the decoder's own. The figures: docs/quality.md (Fashion-MNIST).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

KNOTS = 65  # quantiles 0, 1/64, ..., 1 of each class's levels: 33, 65 and 257 knots measured alike (quality.md)
LEVELS_PER_CLASS = 2_000_000  # most training pixels per class the quantiles are taken over (a random subset)

Draw = Callable[[Tensor, Tensor], Tensor]  # (z (N, D), labels (N,)) -> grey levels (N, 1, H, W) in [0, 1]


class ToneError(ValueError):
    """A tone curves file that is not C rows of nondecreasing knots in [0, 1]."""


@dataclass(frozen=True)
class ToneCurves:
    """Per class c, the piecewise-linear map through the points (drawn[c, k], real[c, k]): levels below drawn[c, 0]
    go to real[c, 0], above drawn[c, -1] to real[c, -1]."""

    drawn: Tensor  # float32 (C, K), each row nondecreasing, in [0, 1]
    real: Tensor  # float32 (C, K), each row nondecreasing, in [0, 1]

    def __post_init__(self) -> None:
        d, r = self.drawn, self.real
        if d.dtype != torch.float32 or r.dtype != torch.float32 or d.ndim != 2 or d.shape != r.shape:
            raise ToneError(f"tone curves must be two float32 (C, K) tensors, not {tuple(d.shape)}, {tuple(r.shape)}")
        if d.shape[1] < 2 or not bool(torch.isfinite(d).all() and torch.isfinite(r).all()):
            raise ToneError("tone curves need at least two finite knots per class")
        for t in (d, r):
            if t.min() < 0 or t.max() > 1 or bool((t[:, 1:] < t[:, :-1]).any()):
                raise ToneError("tone curves' knots must be nondecreasing grey levels in [0, 1]")

    @property
    def num_classes(self) -> int:
        return self.drawn.shape[0]

    def apply(self, images: Tensor, labels: Tensor) -> Tensor:
        """Grey levels (N, 1, H, W) drawn under labels (N,) -> the same shape, each row through its label's curve
        alone (so a row's result does not depend on the others in its batch)."""
        n, k = images.shape[0], self.drawn.shape[1]
        flat = images.reshape(n, -1).contiguous()
        xs, ys = self.drawn[labels], self.real[labels]  # (N, K)
        right = torch.searchsorted(xs, flat).clamp_(1, k - 1)  # (N, M): the knot at or above each level
        x0, x1 = xs.gather(1, right - 1), xs.gather(1, right)
        y0, y1 = ys.gather(1, right - 1), ys.gather(1, right)
        w = ((flat - x0) / (x1 - x0).clamp_min(1e-6)).clamp_(0.0, 1.0)
        return (y0 + w * (y1 - y0)).reshape(images.shape)

    def to(self, device: str | torch.device) -> ToneCurves:
        return ToneCurves(self.drawn.to(device), self.real.to(device))

    def state(self) -> dict[str, Tensor]:
        return {"drawn": self.drawn, "real": self.real}

    def save(self, path: Path) -> None:
        torch.save(self.state(), path)

    @classmethod
    def load(cls, path: Path, num_classes: int) -> ToneCurves:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several kinds for a file that is not its own
            raise ToneError(f"{path.name} is not a tone curves file: {e}") from None
        if not isinstance(state, dict) or set(state) != {"drawn", "real"}:
            raise ToneError(f"{path.name} must hold exactly the tensors 'drawn' and 'real'")
        curves = cls(drawn=state["drawn"], real=state["real"])
        if curves.num_classes != num_classes:
            raise ToneError(f"{path.name} has curves for {curves.num_classes} classes, the model {num_classes}")
        return curves


def toned(draw: Draw, curves: ToneCurves | None) -> Draw:
    """What the service draws: `draw` (the decoder), then the curves when the model has them."""
    if curves is None:
        return draw
    return lambda z, labels: curves.apply(draw(z, labels), labels)


def _quantiles(levels: Tensor, knots: int) -> Tensor:
    return torch.quantile(levels.float(), torch.linspace(0.0, 1.0, knots, dtype=torch.float32)).clamp_(0.0, 1.0)


@torch.no_grad()
def fit_tone(
    images: Tensor, labels: Tensor, samples: Callable[[int], tuple[Tensor, Tensor]], draw: Draw, *,
    num_classes: int, seed: int, knots: int = KNOTS,
) -> ToneCurves:  # fmt: skip
    """Curves from training images (uint8 (N, H, W)) with labels (N,), and, per class c, the levels draw gives for
    samples(c) (its latents and labels, as the service samples them)."""
    g = torch.Generator().manual_seed(seed)
    drawn, real = [], []
    for c in range(num_classes):
        levels = images[labels == c].flatten()
        if levels.numel() == 0:
            raise ToneError(f"no training image of class {c} to fit its tone curve on")
        if levels.numel() > LEVELS_PER_CLASS:
            levels = levels[torch.randint(levels.numel(), (LEVELS_PER_CLASS,), generator=g)]
        real.append(_quantiles(levels.float() / 255.0, knots))
        z, y = samples(c)
        drawn.append(_quantiles(draw(z, y).flatten(), knots))
    return ToneCurves(drawn=torch.stack(drawn), real=torch.stack(real))
