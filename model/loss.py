"""The negative ELBO of the conditional VAE, per image, in nats.

-ELBO(x, y) = E_q[-log p(x | z, y)] + KL(q(z | x, y) || p(z | y))
(Kingma & Welling 2014, eq. 3; Sohn et al. 2015, eq. 4)
with a Bernoulli likelihood on grey values in [0, 1] (binary cross-entropy with logits).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def reconstruction_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | z, y) per image: Bernoulli cross-entropy summed over pixels. (N, ...) -> (N,)"""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


def kl_to_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(log_var))) || N(0, I)) per item (Kingma & Welling 2014, appendix B). (N, D) -> (N,)"""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)


def label_invariance_penalty(adversary_logits: Tensor) -> Tensor:
    """KL(uniform || p_adv(y | z)) per item: 0 exactly when the adversary's guess of the label from z is
    uniform, i.e. z tells it nothing (Edwards & Storkey 2016; the uniform target is Tzeng et al. 2015's
    domain confusion). Bounded below, unlike maximising the adversary's cross-entropy. (N, C) -> (N,)"""
    log_p = adversary_logits.log_softmax(dim=1)
    return -log_p.mean(dim=1) - math.log(log_p.shape[1])
