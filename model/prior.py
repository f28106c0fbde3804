"""p(z | y): the class-conditional Gaussian prior the model samples from.

The network is trained against N(0, I). After training, the prior is refitted to the aggregate posterior
of each class, (1/N_y) sum_i q(z | x_i, y), by matching its first two moments: a full-covariance Gaussian
per class. Sampling from it instead of N(0, I) avoids the 'holes' of the latent space that the encoder
never uses, where decoded digits are neither the class asked for nor realistic (see Rosca et al. 2018,
"Distribution Matching in Variational Inference"). N(0, I) is the special case mean = 0, scale_tril = I.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class GaussianPrior:
    """N(mean[y], scale_tril[y] @ scale_tril[y].T) for each label y."""

    def __init__(self, mean: Tensor, scale_tril: Tensor, kind: str) -> None:
        if mean.ndim != 2 or scale_tril.shape != (*mean.shape, mean.shape[1]):
            raise ValueError(
                f"prior shapes do not agree: mean {tuple(mean.shape)}, scale_tril {tuple(scale_tril.shape)}"
            )
        self.mean = mean.float()  # (C, D)
        self.scale_tril = scale_tril.float()  # (C, D, D), lower triangular, positive diagonal
        self.kind = kind

    @property
    def num_classes(self) -> int:
        return self.mean.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.mean.shape[1]

    @classmethod
    def standard(cls, num_classes: int, latent_dim: int) -> GaussianPrior:
        eye = torch.eye(latent_dim).expand(num_classes, latent_dim, latent_dim)
        return cls(torch.zeros(num_classes, latent_dim), eye.clone(), kind="standard_normal")

    @classmethod
    def fit_aggregate_posterior(
        cls, means: Tensor, log_vars: Tensor, labels: Tensor, num_classes: int, jitter: float = 1e-5
    ) -> GaussianPrior:
        """Moment-match a Gaussian to each class's mixture of posteriors N(means[i], diag(exp(log_vars[i])))."""
        d = means.shape[1]
        mus, trils = [], []
        for c in range(num_classes):
            m = means[labels == c].double()  # (N_c, D)
            if m.shape[0] < 2:
                raise ValueError(f"cannot fit the prior of class {c}: {m.shape[0]} examples")
            v = log_vars[labels == c].double().exp()  # (N_c, D)
            mu = m.mean(dim=0)
            centred = m - mu
            cov = centred.T @ centred / m.shape[0] + torch.diag(v.mean(dim=0)) + jitter * torch.eye(d, dtype=m.dtype)
            mus.append(mu)
            trils.append(torch.linalg.cholesky(cov))
        return cls(torch.stack(mus).float(), torch.stack(trils).float(), kind="class_gaussian")

    def to(self, device: torch.device | str) -> GaussianPrior:
        return GaussianPrior(self.mean.to(device), self.scale_tril.to(device), self.kind)

    def sample(self, y: Tensor, eps: Tensor, temperature: float = 1.0) -> Tensor:
        """z = mean[y] + temperature * scale_tril[y] @ eps, with eps ~ N(0, I). (N,), (N, D) -> (N, D)

        eps is the standardised 'style'; the same eps under two labels is the same hand in both classes.
        """
        return self.mean[y] + temperature * (self.scale_tril[y] @ eps.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        """log p(z | y). (N, D), (N,) -> (N,)"""
        tril = self.scale_tril[y]  # (N, D, D)
        white = torch.linalg.solve_triangular(tril, (z - self.mean[y]).unsqueeze(-1), upper=False).squeeze(-1)
        log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        return -0.5 * white.pow(2).sum(dim=-1) - log_det - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def kl(self, mean: Tensor, log_var: Tensor, y: Tensor) -> Tensor:
        """KL(N(mean, diag(exp(log_var))) || p(z | y)), closed form for two Gaussians. (N, D) -> (N,)"""
        tril = self.scale_tril[y]  # (N, D, D)
        std = torch.exp(0.5 * log_var)
        # tr(S^-1 diag(std^2)) = ||L^-1 diag(std)||_F^2 and the Mahalanobis term ||L^-1 (mean - mu)||^2.
        a = torch.linalg.solve_triangular(tril, torch.diag_embed(std), upper=False)
        b = torch.linalg.solve_triangular(tril, (mean - self.mean[y]).unsqueeze(-1), upper=False).squeeze(-1)
        log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        return 0.5 * (
            a.pow(2).sum(dim=(-2, -1)) + b.pow(2).sum(dim=-1) - self.latent_dim + log_det - log_var.sum(dim=-1)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean.tolist(), "scale_tril": self.scale_tril.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GaussianPrior:
        return cls(
            torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["scale_tril"], dtype=torch.float32), d["kind"]
        )


def style_noise(n: int, latent_dim: int, seed: int) -> Tensor:
    """The standardised styles eps ~ N(0, I) of n grid columns, a pure function of the seed. -> (n, D)"""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


def sample_latents(
    prior: GaussianPrior, digits: list[int], n: int, seed: int, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """How the service samples: n styles from the seed, each decoded under every digit asked for.

    -> (z (len(digits) * n, D), y (len(digits) * n,)), digit-major: row r of a grid is digits[r].
    """
    eps = style_noise(n, prior.latent_dim, seed).repeat(len(digits), 1)  # (R*n, D)
    y = torch.tensor(digits, dtype=torch.int64).repeat_interleave(n)  # (R*n,)
    return prior.sample(y, eps, temperature), y
