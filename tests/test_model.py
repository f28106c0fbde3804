"""The network, its loss and its prior: shapes, closed forms against torch.distributions, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import importance_weighted_nll, label_log_probs
from model.loss import free_bits_kl, kl_to_standard_normal, reconstruction_nll
from model.network import CVAE, CVAEConfig
from model.prior import GaussianPrior, sample_latents, style_noise


def random_prior(c: int = 3, d: int = 4, seed: int = 0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(c, d, d, generator=g)
    cov = a @ a.transpose(1, 2) + 0.5 * torch.eye(d)
    return GaussianPrior(torch.randn(c, d, generator=g), torch.linalg.cholesky(cov), kind="test")


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("decoder", ["mlp", "conv"])
def test_shapes_for_every_architecture(encoder: str, decoder: str) -> None:
    cfg = CVAEConfig(latent_dim=5, encoder=encoder, decoder=decoder, hidden=(32,), channels=(4, 8))
    model = CVAE(cfg)
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 4, 9])
    out = model(x, y)
    assert out.logits.shape == (3, 1, 28, 28)
    assert out.mean.shape == out.log_var.shape == out.z.shape == (3, 5)
    probs = model.decoder(out.z, y)
    assert probs.shape == (3, 1, 28, 28) and probs.min() >= 0 and probs.max() <= 1


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


def test_free_bits_clamps_each_dimension_from_below() -> None:
    mean, log_var = torch.zeros(8, 3), torch.zeros(8, 3)  # KL exactly 0 in every dimension
    assert free_bits_kl(mean, log_var, 0.25).item() == pytest.approx(0.75)


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
    torch.testing.assert_close(z[:5], style_noise(5, 4, 42))
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


def test_checkpoint_round_trips_with_weights_only(tmp_path: Path) -> None:
    cfg = CVAEConfig(latent_dim=3, hidden=(16,), channels=(4, 8))
    model = CVAE(cfg)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 1, 28, 28), torch.tensor([1, 2])).logits.sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", model, {"epochs_done": 3, "history": [{"a": 1.0}]}, opt.state_dict())
    loaded, payload = load_checkpoint(tmp_path / "c.pt")
    assert loaded.cfg == cfg and payload["meta"]["epochs_done"] == 3
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
