"""After training: the posteriors of the training set, the class-conditional sampling prior fitted to them, and the
sample grid a person watches."""

from __future__ import annotations

import torch
from torch import Tensor

from model.network import CVAE
from model.pictures import encode_png, tile_grid
from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior, sample_latents
from training.config import TrainConfig
from training.cvae.train import Batches


@torch.no_grad()
def encode_all(model: CVAE, data: Batches, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    model.eval()
    means, log_vars = [], []
    for rows in data.iterate(batch_size):
        m, lv = model.encoder(data.x[rows], data.y[rows])
        means.append(m.float())
        log_vars.append(lv.float())
    return torch.cat(means), torch.cat(log_vars)


def fit_prior(model: CVAE, data: Batches, cfg: TrainConfig) -> Prior:
    """The class-conditional sampling prior of --prior, fitted to the training set's posteriors."""
    c, d = model.cfg.num_classes, model.cfg.latent_dim
    if cfg.prior == "standard":
        return GaussianPrior.standard(c, d)
    means, log_vars = encode_all(model, data)
    means, log_vars, labels = means.cpu(), log_vars.cpu(), data.y.cpu()
    if cfg.prior == "class_gaussian":
        return GaussianPrior.fit_aggregate_posterior(means, log_vars, labels, c)
    return AggregatePosteriorPrior.fit(
        means, log_vars, labels, c, cfg.prior_components, bandwidth=cfg.prior_bandwidth, seed=cfg.seed
    )


@torch.no_grad()
def sample_grid_png(model: CVAE, prior: Prior, columns: int = 10, seed: int = 0, temperature: float = 1.0) -> bytes:
    """One row per digit, one fixed style (eps) per column: the picture a person watches during training."""
    model.eval()
    cfg = model.cfg
    device = next(model.parameters()).device
    z, y = sample_latents(prior, list(range(cfg.num_classes)), columns, seed, temperature)
    images = model.decoder(z.to(device), y.to(device)).float().cpu()
    return encode_png(tile_grid(images, columns=columns, padding=2))
