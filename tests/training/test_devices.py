"""Device mixing, caught on a CPU-only machine (issue 32): the prior's sampling and scoring with the prior on another
device than the CPU noise is drawn on.

PyTorch's `meta` device stands in for CUDA: an op mixing a meta tensor with a CPU tensor that is not a 0-dim scalar
raises the same "expected all tensors on the same device" a CUDA/CPU mix raises, on any machine. Meta tensors carry
no values, so only steps that never read values can run on it; these do. (What crashed every CUDA run at its end: the
final sample grid multiplied the prior's CUDA tensors by CPU noise.)"""

from __future__ import annotations

import pytest
import torch

from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior, sample_latents, sample_latents_many

META = torch.device("meta")


def priors() -> list[Prior]:
    g = torch.Generator().manual_seed(0)
    means, log_vars = torch.randn(60, 4, generator=g), torch.randn(60, 4, generator=g) * 0.1 - 1
    labels = torch.arange(60) % 3
    return [
        GaussianPrior.standard(3, 4),
        GaussianPrior.fit_aggregate_posterior(means, log_vars, labels, 3),
        AggregatePosteriorPrior.fit(means, log_vars, labels, 3, 5, bandwidth=0.4, seed=0),
    ]


@pytest.mark.parametrize("prior", priors(), ids=lambda p: type(p).__name__ + "-" + getattr(p, "kind", ""))
def test_sampling_a_prior_on_another_device_draws_its_noise_on_the_cpu_and_moves_it(prior: Prior) -> None:
    on_meta = prior.to(META)
    z, y = sample_latents(on_meta, [0, 1, 2], 4, seed=0, temperature=0.8)  # the grid: one row per digit
    assert z.device == META and y.device == META and z.shape == (12, 4)
    (z1, _), (z2, _) = sample_latents_many(on_meta, [([1], 3, 0, 1.0), ([0, 2], 2, 1, 0.5)])
    assert z1.device == META and z2.device == META


@pytest.mark.parametrize("prior", priors(), ids=lambda p: type(p).__name__ + "-" + getattr(p, "kind", ""))
def test_scoring_every_label_on_another_device_builds_its_labels_there(prior: Prior) -> None:
    mean, log_var = torch.zeros(2, 3, 4, device=META), torch.zeros(2, 3, 4, device=META)
    assert prior.to(META).kl_each_label(mean, log_var).shape == (2, 3)
