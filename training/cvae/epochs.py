"""The CVAE's epochs: after each, rank 0 validates, writes metrics.jsonl, the epoch's sample grid and the checkpoint."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch

from model.prior import GaussianPrior
from training.config import TrainConfig
from training.cvae import distributed
from training.cvae.checkpoint import CHECKPOINT, save_state
from training.cvae.distributed import Launch
from training.cvae.prior import sample_grid_png
from training.cvae.train import Batches, TrainState, train_one_epoch, validate

log = logging.getLogger(__name__)


def train_epochs(
    state: TrainState,
    train: Batches,
    val: Batches,
    cfg: TrainConfig,
    launch: Launch,
    device: torch.device,
    start_epoch: int,
    history: list[dict[str, Any]],
) -> None:
    """Epochs start_epoch..cfg.epochs; after each, rank 0 validates, records it (appended to `history`) and writes
    the checkpoint. Ctrl-C leaves the last whole epoch's checkpoint, never one of half an epoch."""
    ckpt_path = cfg.resolved_run_dir / CHECKPOINT
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            stats = train_one_epoch(state, train, cfg, epoch, device, launch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if launch.is_main:
                end_epoch(state, val, cfg, launch, epoch, stats, time.perf_counter() - t0, len(train), history)
            distributed.barrier(launch)
    except KeyboardInterrupt:
        if launch.is_main:
            if ckpt_path.is_file():
                log.warning("interrupted: the last epoch's checkpoint is in %s; continue with --resume", ckpt_path)
            else:
                log.warning("interrupted before the first epoch ended: no checkpoint to resume from")
        raise


def end_epoch(
    state: TrainState,
    val: Batches,
    cfg: TrainConfig,
    launch: Launch,
    epoch: int,
    stats: dict[str, Any],
    seconds: float,
    n_train: int,
    history: list[dict[str, Any]],
) -> None:
    """Rank 0 after an epoch: validation, metrics.jsonl, the epoch's sample grid, the checkpoint, one log line."""
    run_dir = cfg.resolved_run_dir
    stats.update({f"val_{k}": v for k, v in validate(state.final, val, seed=cfg.seed).items()})
    stats.update(epoch=epoch + 1, seconds=seconds, samples_per_s=n_train / seconds)
    history.append(stats)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(stats) + "\n")
    standard = GaussianPrior.standard(state.model.cfg.num_classes, state.model.cfg.latent_dim)
    (run_dir / "samples" / f"epoch-{epoch + 1:03d}.png").write_bytes(sample_grid_png(state.final, standard))
    save_state(run_dir / CHECKPOINT, state, cfg, launch, epoch + 1, history)
    log.info(
        "epoch %d/%d  train -ELBO %.2f  val -ELBO %.2f (recon %.2f + KL %.2f)  %.1fs (%.0f img/s)",
        epoch + 1, cfg.epochs, stats["train_nelbo"], stats["val_nelbo"], stats["val_recon"],
        stats["val_kl"], seconds, stats["samples_per_s"],
    )  # fmt: skip
