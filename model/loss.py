"""The negative ELBO of the conditional VAE, per image, in nats.

-ELBO(x, y) = E_q[-log p(x | z, y)] + KL(q(z | x, y) || p(z | y))
(Kingma & Welling 2014, eq. 3; Sohn et al. 2015, eq. 4)
with a Bernoulli likelihood on grey values in [0, 1] (binary cross-entropy with logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | z, y) per image: Bernoulli cross-entropy summed over pixels. (N, ...) -> (N,)"""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


def kl_to_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(log_var))) || N(0, I)) per item (Kingma & Welling 2014, appendix B). (N, D) -> (N,)"""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)


def free_bits_kl(mean: Tensor, log_var: Tensor, bits_per_dim: float) -> Tensor:
    """The KL term with 'free bits' (Kingma et al. 2016, eq. 15): each latent dimension's batch-mean KL is
    clamped from below at `bits_per_dim` nats, so the optimiser gains nothing by collapsing it. -> scalar"""
    per_dim = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).mean(dim=0)  # (D,)
    return torch.clamp(per_dim, min=bits_per_dim).sum()


def label_discrimination_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the true labels under softmax(scores), scores (N, C) being -ELBO(x, y) for every label y:
    the log-likelihood of p(y | x) by Bayes' rule with a uniform p(y), as in hybrid generative-discriminative
    training (Lasserre et al. 2006). -> scalar"""
    return F.cross_entropy(scores, labels)
