"""The network, its loss and its prior: shapes, closed forms against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from model.inference import importance_weighted_nll, label_log_probs
from model.loss import kl_to_standard_normal, label_invariance_penalty, reconstruction_nll
from model.network import CVAE, CVAEConfig
from model.prior import AggregatePosteriorPrior, GaussianPrior, sample_latents, sample_latents_many, style_noise


def random_prior(c: int = 3, d: int = 4, seed: int = 0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(c, d, d, generator=g)
    cov = a @ a.transpose(1, 2) + 0.5 * torch.eye(d)
    return GaussianPrior(torch.randn(c, d, generator=g), torch.linalg.cholesky(cov), kind="test")


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_shapes_for_every_architecture(encoder: str) -> None:
    cfg = CVAEConfig(latent_dim=5, encoder=encoder, hidden=(32,), channels=(4, 8))  # type: ignore[arg-type]
    model = CVAE(cfg)
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 4, 9])
    out = model(x, y)
    assert out.logits.shape == (3, 1, 28, 28)
    assert out.mean.shape == out.log_var.shape == out.z.shape == (3, 5)
    probs = model.decoder(out.z, y)
    assert probs.shape == (3, 1, 28, 28) and probs.min() >= 0 and probs.max() <= 1


def test_encoding_under_every_label_at_once_equals_encoding_under_each() -> None:
    model = CVAE(CVAEConfig(latent_dim=3, hidden=(16,), channels=(4, 8))).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        mean, log_var = model.encoder.all_labels(x)
        each_mean, each_log_var = model.encoder(x.repeat_interleave(10, 0), torch.arange(10).repeat(4))
    torch.testing.assert_close(mean, each_mean)
    torch.testing.assert_close(log_var, each_log_var)


def test_decoder_output_depends_on_the_label() -> None:
    model = CVAE(CVAEConfig(latent_dim=3, hidden=(16,), channels=(4, 8)))
    z = torch.randn(1, 3)
    assert not torch.allclose(model.decoder(z, torch.tensor([1])), model.decoder(z, torch.tensor([2])))


def test_config_rejects_unknown_architecture_and_round_trips_through_dict() -> None:
    with pytest.raises(ValueError, match="mlp"):
        CVAEConfig(encoder="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CVAEConfig(latent_dim=0)
    cfg = CVAEConfig(hidden=[64, 32], channels=[8, 16])  # type: ignore[arg-type]
    assert cfg.hidden == (64, 32)
    assert CVAEConfig.from_dict(cfg.to_dict()) == cfg


def test_reconstruction_nll_is_summed_bernoulli_cross_entropy() -> None:
    logits, x = torch.randn(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    p = torch.sigmoid(logits)
    manual = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(logits, x), manual, rtol=1e-4, atol=1e-3)


def test_kl_to_standard_normal_matches_torch_distributions() -> None:
    mean, log_var = torch.randn(4, 6), torch.randn(4, 6)
    expected = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, log_var), expected)


def test_label_invariance_penalty_is_zero_only_for_a_uniform_guess() -> None:
    uniform = torch.zeros(3, 10)
    assert label_invariance_penalty(uniform).abs().max() < 1e-6
    confident = torch.zeros(1, 10)
    confident[0, 4] = 20.0
    assert label_invariance_penalty(confident).item() > 5.0
    # KL(uniform || p), by hand
    logits = torch.randn(2, 10)
    p = logits.softmax(1)
    manual = (0.1 * (torch.log(torch.tensor(0.1)) - p.log())).sum(1)
    torch.testing.assert_close(label_invariance_penalty(logits), manual)


def test_prior_kl_and_log_prob_match_multivariate_normal() -> None:
    prior = random_prior()
    mean, log_var, y = torch.randn(5, 4), torch.randn(5, 4) * 0.3, torch.tensor([0, 1, 2, 1, 0])
    p = MultivariateNormal(prior.mean[y], scale_tril=prior.scale_tril[y])
    q = MultivariateNormal(mean, scale_tril=torch.diag_embed((0.5 * log_var).exp()))
    torch.testing.assert_close(prior.kl(mean, log_var, y), kl_divergence(q, p), rtol=1e-4, atol=1e-4)
    z = torch.randn(5, 4)
    torch.testing.assert_close(prior.log_prob(z, y), p.log_prob(z), rtol=1e-5, atol=1e-4)


def test_standard_prior_kl_equals_the_training_kl() -> None:
    mean, log_var, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    std = GaussianPrior.standard(10, 6)
    torch.testing.assert_close(std.kl(mean, log_var, y), kl_to_standard_normal(mean, log_var), rtol=1e-5, atol=1e-5)


def test_fitted_prior_matches_the_moments_of_the_aggregate_posterior() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(2).repeat(2000)
    means = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + labels[:, None] * 3.0
    log_vars = torch.full((4000, 3), math.log(0.25))
    prior = GaussianPrior.fit_aggregate_posterior(means, log_vars, labels, num_classes=2)
    torch.testing.assert_close(prior.mean[1], means[labels == 1].mean(0), rtol=1e-4, atol=1e-4)
    cov = prior.scale_tril[0] @ prior.scale_tril[0].T
    expected_var = means[labels == 0].var(0, unbiased=False) + 0.25
    torch.testing.assert_close(cov.diagonal(), expected_var, rtol=1e-3, atol=1e-3)


def test_fit_refuses_a_class_without_examples() -> None:
    with pytest.raises(ValueError, match="class 2"):
        GaussianPrior.fit_aggregate_posterior(torch.randn(4, 2), torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), 3)


def test_prior_round_trips_through_plain_dict() -> None:
    prior = random_prior()
    back = GaussianPrior.from_dict(prior.to_dict())
    assert back.kind == "test"
    torch.testing.assert_close(back.scale_tril, prior.scale_tril)


def test_sample_latents_share_each_columns_style_across_digits_and_are_seeded() -> None:
    prior = GaussianPrior.standard(10, 4)
    z, y = sample_latents(prior, [3, 7], n=5, seed=42)
    assert z.shape == (10, 4) and y.tolist() == [3] * 5 + [7] * 5
    torch.testing.assert_close(z[:5], z[5:])  # N(0, I) for every class: same style = same z
    torch.testing.assert_close(z[:5], style_noise(5, 4, 42)[0])
    z2, _ = sample_latents(prior, [3, 7], n=5, seed=42)
    assert torch.equal(z, z2)
    z0, _ = sample_latents(prior, [3], n=5, seed=42, temperature=0.0)
    assert torch.equal(z0, torch.zeros(5, 4))


def test_label_log_probs_is_a_distribution_over_labels() -> None:
    model = CVAE(CVAEConfig(latent_dim=3, hidden=(16,), channels=(4, 8))).eval()
    with torch.no_grad():
        log_probs, mean, log_var = label_log_probs(
            model.encoder, model.decoder, random_prior(10, 3), torch.rand(2, 1, 28, 28)
        )
    assert log_probs.shape == (2, 10) and mean.shape == log_var.shape == (2, 10, 3)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(2))


def test_importance_weighted_bound_tightens_the_elbo() -> None:
    torch.manual_seed(0)
    model = CVAE(CVAEConfig(latent_dim=3, hidden=(16,), channels=(4, 8))).eval()
    prior = GaussianPrior.standard(10, 3)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with torch.no_grad():
        k1 = importance_weighted_nll(
            model.encoder, model.decoder, prior, x, y, k=1, generator=torch.Generator().manual_seed(0)
        )
        k64 = importance_weighted_nll(
            model.encoder, model.decoder, prior, x, y, k=64, generator=torch.Generator().manual_seed(0)
        )
    assert k64.mean() < k1.mean()


def random_mixture(c: int = 3, m: int = 5, d: int = 4, seed: int = 0) -> AggregatePosteriorPrior:
    g = torch.Generator().manual_seed(seed)
    return AggregatePosteriorPrior(torch.randn(c, m, d, generator=g) * 2, torch.randn(c, m, d, generator=g) * 0.3 - 1)


def test_aggregate_prior_log_prob_is_the_mixture_density() -> None:
    prior = random_mixture()
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    for i in range(6):
        comps = Normal(prior.means[y[i]], (0.5 * prior.log_vars[y[i]]).exp())
        expected = torch.logsumexp(comps.log_prob(z[i]).sum(-1), 0) - math.log(5)
        torch.testing.assert_close(prior.log_prob(z[i : i + 1], y[i : i + 1])[0], expected, rtol=1e-5, atol=1e-5)


def test_aggregate_prior_samples_its_components_and_scales_about_the_class_centre() -> None:
    prior = random_mixture()
    y = torch.tensor([1, 1])
    eps, u = torch.zeros(2, 4), torch.tensor([0.0, 0.999])
    z = prior.sample(y, eps, 1.0, u)
    torch.testing.assert_close(z, prior.means[1, [0, 4]])  # eps = 0: exactly the component means
    torch.testing.assert_close(prior.sample(y, eps, 0.0, u), prior.gaussian.mean[y])
    with pytest.raises(ValueError, match="needs u"):
        prior.sample(y, eps)


def test_aggregate_prior_kl_estimate_averages_to_the_kl() -> None:
    prior = random_mixture(c=1, m=3)
    mean, log_var, y = torch.zeros(1, 4), torch.full((1, 4), -1.0), torch.zeros(1, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    z = mean + (0.5 * log_var).exp() * torch.randn(20000, 4, generator=g)
    estimates = prior.kl_estimate(mean.expand(20000, 4), log_var.expand(20000, 4), z, y.expand(20000))
    q = Normal(mean, (0.5 * log_var).exp())
    exact_mc = (q.log_prob(z).sum(-1) - prior.log_prob(z, y.expand(20000))).mean()
    torch.testing.assert_close(estimates.mean(), exact_mc)
    assert estimates.mean() > 0


def test_aggregate_prior_fit_keeps_m_posteriors_per_class_deterministically() -> None:
    means, log_vars = torch.randn(40, 3), torch.randn(40, 3)
    labels = torch.arange(2).repeat(20)
    a = AggregatePosteriorPrior.fit(means, log_vars, labels, 2, components=8, seed=1)
    b = AggregatePosteriorPrior.fit(means, log_vars, labels, 2, components=8, seed=1)
    assert a.means.shape == (2, 8, 3) and torch.equal(a.means, b.means)
    for row in a.means[1]:
        assert any(torch.equal(row, m) for m in means[labels == 1])
    with pytest.raises(ValueError, match="class 0"):
        AggregatePosteriorPrior.fit(means, log_vars, labels, 2, components=21)


def test_sample_latents_with_a_mixture_share_component_and_style_down_columns() -> None:
    prior = random_mixture(c=10, m=7)
    z, _y = sample_latents(prior, [2, 2], n=3, seed=5)
    torch.testing.assert_close(z[:3], z[3:])  # the same digit twice: the same column noise
    z2, _ = sample_latents(prior, [2, 2], n=3, seed=5)
    assert torch.equal(z, z2)


def test_aggregate_prior_bandwidth_widens_each_component() -> None:
    means, log_vars = torch.randn(40, 3), torch.full((40, 3), math.log(0.04))
    labels = torch.arange(2).repeat(20)
    wide = AggregatePosteriorPrior.fit(means, log_vars, labels, 2, components=8, bandwidth=0.3, seed=1)
    torch.testing.assert_close(wide.log_vars.exp(), torch.full((2, 8, 3), 0.04 + 0.09))


@pytest.mark.parametrize("kind", ["mixture", "gaussian"])
def test_sampling_many_requests_at_once_gives_each_the_same_numbers_as_alone(kind) -> None:
    g = torch.Generator().manual_seed(3)
    if kind == "mixture":
        prior = AggregatePosteriorPrior(torch.randn(10, 7, 16, generator=g), torch.randn(10, 7, 16, generator=g) - 1)
    else:
        prior = GaussianPrior.fit_aggregate_posterior(
            torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g) - 1, torch.arange(10).repeat(30), 10
        )
    requests = [([3], 8, 1, 0.8), ([0, 9, 9], 5, 2, 1.0), ([7], 1, 3, 0.0), ([1, 2], 33, 4, 2.5), ([3], 8, 1, 0.8)]
    together = sample_latents_many(prior, requests)
    for (digits, n, seed, t), (z, y) in zip(requests, together, strict=True):
        alone_z, alone_y = sample_latents(prior, digits, n, seed, t)
        assert torch.equal(z, alone_z) and torch.equal(y, alone_y)
    assert not torch.equal(together[0][0], together[1][0][:8])
