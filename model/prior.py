"""p(z | y): the class-conditional priors the model samples from.

The network is trained against N(0, I). After training, the prior is refitted to the aggregate posterior of
each class, (1/N_y) sum_i q(z | x_i, y). Sampling from it instead of N(0, I) avoids the 'holes' of the latent
space that the encoder never uses, where decoded digits are neither the class asked for nor realistic (Rosca
et al. 2018, "Distribution Matching in Variational Inference"; Tomczak & Welling 2018, "VAE with a VampPrior").

- AggregatePosteriorPrior: the aggregate posterior itself, kept as a uniform mixture of the posteriors of M
  training images per class (the default: measured best for sample accuracy and realism).
- GaussianPrior: one full-covariance Gaussian per class moment-matched to it ("class_gaussian"), or N(0, I)
  ("standard_normal").
Both sample from the same seeded noise: eps ~ N(0, I) (the 'style') and u ~ U(0, 1) (which component).

Each also has a `shared` form: every class's prior pooled into one distribution, for a latent that every digit
decodes (a grid column: one hand, ten digits). Training makes that meaningful by leaving z no label information
(model.network.LabelAdversary), so that every class's aggregate posterior fills the same region.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from model.loss import kl_to_standard_normal


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
        """The same prior on `device`; its shared Gaussian computed where this one is and moved (the same numbers)."""
        moved = GaussianPrior(self.mean.to(device), self.scale_tril.to(device), self.kind)
        moved.__dict__["shared"] = self.shared.to(device) if self.num_classes > 1 else moved
        return moved

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @functools.cached_property
    def shared(self) -> GaussianPrior:
        """The equal-weight mixture of every class's Gaussian, moment-matched by one Gaussian (one class)."""
        mean = self.mean.double().mean(dim=0)  # (D,)
        tril = self.scale_tril.double()
        within = (tril @ tril.transpose(1, 2)).mean(dim=0)
        centred = self.mean.double() - mean
        cov = within + centred.T @ centred / self.num_classes
        return GaussianPrior(mean[None].float(), torch.linalg.cholesky(cov)[None].float(), self.kind)

    def sample(self, y: Tensor, eps: Tensor, temperature: float | Tensor = 1.0, u: Tensor | None = None) -> Tensor:
        """z = mean[y] + temperature * scale_tril[y] @ eps, with eps ~ N(0, I). (N,), (N, D) -> (N, D)

        eps is the standardised 'style'; the same eps under two labels is the same hand in both classes.
        u (which mixture component) has no use for a single Gaussian.
        """
        return self.mean[y] + temperature * (self.scale_tril[y] @ eps.unsqueeze(-1)).squeeze(-1)

    def kl_estimate(self, mean: Tensor, log_var: Tensor, z: Tensor, y: Tensor) -> Tensor:
        """KL(q || p(z | y)) per item; closed form here (z, the sample from q, is not needed). -> (N,)"""
        return self.kl(mean, log_var, y)

    def kl_each_label(self, mean: Tensor, log_var: Tensor) -> Tensor:
        """kl_estimate of posteriors (N, C, D) under label c for row [:, c], at their means. -> (N, C)"""
        n, c, d = mean.shape
        labels = torch.arange(c, device=mean.device).repeat(n)
        return self.kl(mean.reshape(n * c, d), log_var.reshape(n * c, d), labels).view(n, c)

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        """log p(z | y). (N, D), (N,) -> (N,)"""
        tril = self.scale_tril[y]  # (N, D, D)
        white = torch.linalg.solve_triangular(tril, (z - self.mean[y]).unsqueeze(-1), upper=False).squeeze(-1)
        log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        return -0.5 * white.pow(2).sum(dim=-1) - log_det - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def kl(self, mean: Tensor, log_var: Tensor, y: Tensor) -> Tensor:
        """KL(N(mean, diag(exp(log_var))) || p(z | y)), closed form for two Gaussians. (N, D) -> (N,)"""
        if self.kind == "standard_normal":  # the same number without matrices: training's every step
            return kl_to_standard_normal(mean, log_var)
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


class AggregatePosteriorPrior:
    """p(z | y) = (1/M) sum_k N(z; means[y, k], diag(exp(log_vars[y, k]))): the posteriors of M training images
    of class y (Tomczak & Welling 2018's VampPrior, with real images for pseudo-inputs)."""

    kind = "aggregate_posterior"

    def __init__(self, means: Tensor, log_vars: Tensor) -> None:
        if means.ndim != 3 or log_vars.shape != means.shape:
            raise ValueError(f"prior shapes do not agree: means {tuple(means.shape)}, log_vars {tuple(log_vars.shape)}")
        self.means = means.float()  # (C, M, D)
        self.log_vars = log_vars.float()  # (C, M, D)
        self.stds = torch.exp(0.5 * self.log_vars)  # once: sampling then uses exactly rounded + - * only
        c, m, d = means.shape
        labels = torch.arange(c).repeat_interleave(m)
        # The moment-matched Gaussian of each class: the centre that temperature scales about.
        self.gaussian = GaussianPrior.fit_aggregate_posterior(
            self.means.reshape(c * m, d).cpu(), self.log_vars.reshape(c * m, d).cpu(), labels, c
        ).to(means.device)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.means.shape[2]

    @property
    def components(self) -> int:
        return self.means.shape[1]

    @classmethod
    def fit(
        cls,
        means: Tensor,
        log_vars: Tensor,
        labels: Tensor,
        num_classes: int,
        components: int,
        bandwidth: float = 0.0,
        seed: int = 0,
    ) -> AggregatePosteriorPrior:
        """Keep the posteriors of `components` training images per class, chosen at random (seeded), each widened
        by a kernel of standard deviation `bandwidth` (variances add): 0 keeps them as they are, sharp, which
        gives unseen digits' posteriors little prior density; wider trades sample accuracy for likelihood."""
        g = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(num_classes):
            idx = torch.nonzero(labels.cpu() == c).flatten()
            if len(idx) < components:
                raise ValueError(f"cannot fit the prior of class {c}: {len(idx)} examples, {components} needed")
            picks.append(idx[torch.randperm(len(idx), generator=g)[:components]])
        index = torch.stack(picks).to(means.device)  # (C, M)
        widened = torch.log(log_vars[index].exp() + bandwidth**2)
        return cls(means[index], widened)

    def to(self, device: torch.device | str) -> AggregatePosteriorPrior:
        """The same prior on `device`: its tensors, the stds and the class Gaussians included, computed once (on the
        CPU, where it was fitted or loaded) and moved, so that every device samples the same numbers."""
        moved = object.__new__(AggregatePosteriorPrior)
        moved.means, moved.log_vars, moved.stds = (t.to(device) for t in (self.means, self.log_vars, self.stds))
        moved.gaussian = self.gaussian.to(device)
        moved.__dict__["shared"] = self.shared.to(device) if self.num_classes > 1 else moved
        return moved

    @property
    def device(self) -> torch.device:
        return self.means.device

    @functools.cached_property
    def shared(self) -> AggregatePosteriorPrior:
        """Every class's components in one mixture (one class of C * M components), centred on their mean."""
        c, m, d = self.means.shape
        return AggregatePosteriorPrior(self.means.reshape(1, c * m, d), self.log_vars.reshape(1, c * m, d))

    def sample(self, y: Tensor, eps: Tensor, temperature: float | Tensor = 1.0, u: Tensor | None = None) -> Tensor:
        """z = centre[y] + temperature * (means[y, k] + std[y, k] * eps - centre[y]), k = floor(u * M).

        (N,), (N, D), u (N,) in [0, 1) -> (N, D). Temperature 1 samples the mixture; 0 gives each class's mean.
        temperature may be a tensor (N, 1): one per row. Only gathers and exactly rounded arithmetic, one element
        at a time: a row's z does not depend on the other rows sampled with it.
        """
        if u is None:
            raise ValueError("sampling a mixture needs u, the uniform noise that picks each component")
        k = (u * self.components).long().clamp_(0, self.components - 1)
        x = self.means[y, k] + self.stds[y, k] * eps
        centre = self.gaussian.mean[y]
        return centre + temperature * (x - centre)

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        """log p(z | y), the log of the mixture density. (N, D), (N,) -> (N,)"""
        mu, log_var = self.means[y], self.log_vars[y]  # (N, M, D)
        sq = (z.unsqueeze(1) - mu).pow(2) / log_var.exp()
        log_k = -0.5 * (sq + log_var + math.log(2 * math.pi)).sum(dim=-1)  # (N, M)
        return torch.logsumexp(log_k, dim=1) - math.log(self.components)

    def kl_estimate(self, mean: Tensor, log_var: Tensor, z: Tensor, y: Tensor) -> Tensor:
        """log q(z | x, y) - log p(z | y) at z: the one-sample estimate of the KL (no closed form). -> (N,)"""
        log_q = -0.5 * ((z - mean).pow(2) / log_var.exp() + log_var + math.log(2 * math.pi)).sum(dim=-1)
        return log_q - self.log_prob(z, y)

    def kl_each_label(self, mean: Tensor, log_var: Tensor) -> Tensor:
        """kl_estimate of posteriors (N, C, D) under label c for row [:, c], at their means (z = mean). -> (N, C)

        What /encode scores every upload by. One matrix product of every row against every component (of every
        class: ten times the arithmetic an elementwise gather of each row's own class does, but a product's rows
        do not depend on one another, so an upload's figures are the same bits however many are scored together;
        the service checks that at start-up)."""
        n, c, d = mean.shape
        w, b = self._product_terms
        rows = mean.reshape(n * c, d)
        product = torch.cat([rows.pow(2), rows], dim=1) @ w  # (N*C, C*M)
        # -2 log N(z; component) for row c against class c's components only; the bias is added to those alone
        # (the same additions on the same numbers as adding it to the whole product: the same bits, a tenth the work).
        own = product.view(n, c, c, -1).diagonal(dim1=1, dim2=2).transpose(1, 2) + b.view(c, -1)  # (N, C, M)
        log_p = torch.logsumexp(-0.5 * own, dim=2) - math.log(self.components)
        log_q = -0.5 * (log_var + math.log(2 * math.pi)).sum(dim=-1)
        return log_q - log_p

    @functools.cached_property
    def _product_terms(self) -> tuple[Tensor, Tensor]:
        """-2 log N(z; means[k], diag exp(log_vars[k])) = [z^2, z] @ w[:, k] + b[k] for every component k."""
        c, m, d = self.means.shape
        precision = torch.exp(-self.log_vars)
        w = torch.cat([precision, -2 * self.means * precision], dim=2).reshape(c * m, 2 * d).T.contiguous()
        b = (self.means.pow(2) * precision + self.log_vars).sum(dim=2).reshape(c * m) + d * math.log(2 * math.pi)
        return w, b

    def to_tensors(self) -> dict[str, Any]:
        return {"kind": self.kind, "means": self.means.cpu(), "log_vars": self.log_vars.cpu()}


Prior = GaussianPrior | AggregatePosteriorPrior


def style_noise(n: int, latent_dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """The noise of n grid columns, a pure function of the seed: (eps (n, D) ~ N(0, I), u (n,) ~ U(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, latent_dim, generator=g)
    return eps, torch.rand(n, generator=g)


def sample_latents(
    prior: Prior, digits: Sequence[int], n: int, seed: int, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """How the service samples: n latents from the seed.

    One digit: n latents from that digit's prior. Several digits (a grid, one row per digit): n latents from
    the prior every digit shares (prior.shared), one per column, each decoded under every row's digit: a column
    is one hand writing each digit. -> (z (len(digits) * n, D), y (len(digits) * n,)), digit-major.
    """
    return sample_latents_many(prior, [(digits, n, seed, temperature)])[0]


class _Draw(NamedTuple):
    """One request's n latents to sample: from `source`, in class y of it, with its noise."""

    source: Prior  # the digit's own prior, or the prior every digit shares
    y: Tensor  # (n,)
    eps: Tensor  # (n, D)
    u: Tensor  # (n,)
    temperature: float


def _draw(prior: Prior, digits: Sequence[int], n: int, seed: int, temperature: float) -> _Draw:
    # The noise is drawn on the CPU, then moved: every device (and every process) samples the same numbers.
    eps, u = (t.to(prior.device) for t in style_noise(n, prior.latent_dim, seed))
    if len(digits) == 1:
        return _Draw(prior, torch.full((n,), digits[0], dtype=torch.int64, device=prior.device), eps, u, temperature)
    return _Draw(prior.shared, torch.zeros(n, dtype=torch.int64, device=prior.device), eps, u, temperature)


def sample_latents_many(
    prior: Prior, requests: Sequence[tuple[Sequence[int], int, int, float]]
) -> list[tuple[Tensor, Tensor]]:
    """sample_latents for each (digits, n, seed, temperature), the same numbers bit for bit: each request's noise
    comes from its own seed; a mixture prior then samples the rows of every request that shares a source (the
    digits' own priors, or the shared one) in one call (elementwise only, so no row depends on the others), a
    Gaussian one request at a time (its matrix product might)."""
    draws = [_draw(prior, digits, n, seed, temperature) for digits, n, seed, temperature in requests]
    columns: list[Tensor] = []
    if isinstance(prior, GaussianPrior):
        columns = [d.source.sample(d.y, d.eps, d.temperature, d.u) for d in draws]
    else:
        columns = [d.eps for d in draws]  # placeholders of the right count, each replaced below
        for source in {id(d.source): d.source for d in draws}.values():
            index = [i for i, d in enumerate(draws) if d.source is source]
            y, eps, u = (torch.cat([getattr(draws[i], k) for i in index]) for k in ("y", "eps", "u"))
            t = torch.cat([torch.full((len(draws[i].y), 1), float(draws[i].temperature)) for i in index])
            t = t.to(source.device)
            for i, z in zip(index, source.sample(y, eps, t, u).split([len(draws[i].y) for i in index]), strict=True):
                columns[i] = z
    out = []
    for (digits, n, _, _), z in zip(requests, columns, strict=True):
        labels = torch.tensor(list(digits), dtype=torch.int64).repeat_interleave(n).to(z.device)
        out.append((z if len(digits) == 1 else z.repeat(len(digits), 1), labels))
    return out
