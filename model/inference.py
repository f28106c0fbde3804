"""Inference that training, evaluation and serving share: label scoring and likelihood bounds.

The functions take the encoder and decoder as modules, eager or TorchScript, so the service measures
exactly what evaluation measures.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from model.loss import reconstruction_nll
from model.network import reparameterize
from model.prior import Prior


class EncoderLike(Protocol):
    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...


class DecoderLike(Protocol):
    def __call__(self, z: Tensor, y: Tensor) -> Tensor: ...
    def logits(self, z: Tensor, y: Tensor) -> Tensor: ...


def elbo_terms(
    encoder: EncoderLike, decoder: DecoderLike, prior: Prior, x: Tensor, y: Tensor, eps: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(reconstruction, kl, mean, log_var) per image; -ELBO = reconstruction + kl, KL taken to `prior`
    (in closed form where there is one, else estimated at the same sample z).

    With eps=None the reconstruction is decoded from one sample of q; pass zeros for the posterior mean.
    """
    mean, log_var = encoder(x, y)
    mean, log_var = mean.float(), log_var.float()  # no-ops in float32; under CUDA autocast the terms sum in float32
    if eps is None:
        eps = torch.randn_like(mean)
    z = reparameterize(mean, log_var, eps)
    return reconstruction_nll(decoder.logits(z, y).float(), x), prior.kl_estimate(mean, log_var, z, y), mean, log_var


class ReaderLike(Protocol):
    generative_weight: float

    def __call__(self, x: Tensor) -> Tensor: ...


def label_log_probs(
    encoder: EncoderLike, decoder: DecoderLike, prior: Prior, x: Tensor, reader: ReaderLike | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """log p(y | x) for every label, by Bayes' rule with a uniform p(y) and the ELBO (at the posterior mean)
    standing in for log p(x | y): the label under which the model explains the image best wins. The one rule for
    labels: /encode infers digits by it (with the model's prior), and training's label-discrimination term is its
    cross-entropy (with the N(0, I) the network trains against).

    With a reader (a model directory's reader.pt), the reader's calibrated log-probabilities decide, with the
    generative score added at the reader's generative_weight (a product of experts, renormalised): the generative
    score alone misreads digits unlike MNIST's (docs: quality).

    x: (N, 1, H, W) -> (log_probs (N, C), mean (N, C, D), log_var (N, C, D)); deterministic.
    """
    n, c = x.shape[0], prior.num_classes
    xs = x.repeat_interleave(c, dim=0)  # (N*C, 1, H, W)
    ys = torch.arange(c, device=x.device).repeat(n)  # (N*C,)
    all_labels = getattr(encoder, "all_labels", None)  # the image's features once (model dirs from 2026-11 on)
    mean, log_var = all_labels(x) if all_labels is not None else encoder(xs, ys)
    mean, log_var = mean.float(), log_var.float()
    weight = 1.0 if reader is None else float(reader.generative_weight)
    if reader is not None and weight == 0:  # the reader alone decides: no decoder pass under every label
        return reader(x).float(), mean.view(n, c, -1), log_var.view(n, c, -1)
    # The ELBO at z = the posterior mean: the KL estimated there (in closed form where the prior has one).
    recon = reconstruction_nll(decoder.logits(mean, ys).float(), xs).view(n, c)
    mean, log_var = mean.view(n, c, -1), log_var.view(n, c, -1)
    log_probs = (-(recon + prior.kl_each_label(mean, log_var))).log_softmax(dim=1)
    if reader is not None:
        log_probs = (reader(x).float() + weight * log_probs).log_softmax(dim=1)
    return log_probs, mean, log_var


def importance_weighted_nll(
    encoder: EncoderLike,
    decoder: DecoderLike,
    prior: Prior,
    x: Tensor,
    y: Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The k-sample importance-weighted bound on -log p(x | y) per image (Burda et al. 2016, eq. 8). -> (N,)"""
    n = x.shape[0]
    mean, log_var = encoder(x, y)  # (N, D)
    std = torch.exp(0.5 * log_var)
    eps = torch.randn((k, *mean.shape), generator=generator, device=mean.device)  # (k, N, D)
    z = mean + std * eps  # (k, N, D)
    yk = y.repeat(k)
    log_px = -reconstruction_nll(decoder.logits(z.flatten(0, 1), yk), x.repeat(k, 1, 1, 1)).view(k, n)
    log_pz = prior.log_prob(z.flatten(0, 1), yk).view(k, n)
    log_qz = (-0.5 * eps.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)  # (k, N)
    return -(torch.logsumexp(log_px + log_pz - log_qz, dim=0) - math.log(k))
