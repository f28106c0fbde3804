"""The training loop: `main(cfg)` trains the CVAE, fits its sampling prior, evaluates and exports.

The whole dataset lives on the training device as one tensor; batches are index slices of it, so there is
no per-batch host work. Each epoch's randomness is seeded from (seed, epoch): a run resumed from an
epoch checkpoint continues exactly as if it had never stopped (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from model.checkpoint import load_checkpoint, save_checkpoint
from model.imaging import encode_png, tile_grid
from model.loss import free_bits_kl, kl_to_standard_normal, label_discrimination_loss, reconstruction_nll
from model.network import CVAE
from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior, sample_latents
from training.augment import random_affine
from training.config import TrainConfig
from training.data import DataSplits, Digits, download_mnist, load_data_dir

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) grey levels in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


@dataclass
class Batches:
    """A dataset resident on one device, cut into shuffled minibatches without host work."""

    x: Tensor  # (N, 1, H, W) float
    y: Tensor  # (N,) int64

    @classmethod
    def from_digits(cls, d: Digits, device: torch.device) -> Batches:
        return cls(to_float(d.images).to(device), d.labels.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]

    def iterate(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator, device=self.x.device) if generator is not None else None
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
            yield self.x[idx], self.y[idx]


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 mixed precision on CUDA; full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over the first 2% of steps, then cosine decay to lr/20 (or constant)."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = max(1, total_steps // 50)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """All of one epoch's randomness (order, augmentation, and via the global seed, the reparameterisation)."""
    torch.manual_seed(seed * 100_003 + epoch)
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def train_one_epoch(
    model: CVAE,
    data: Batches,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    ema: CVAE | None = None,
) -> dict[str, float]:
    """One pass over `data`; updates `ema` (a moving average of the weights) after each step when given."""
    model.train()
    params: list[Tensor] = list(model.parameters())
    ema_params: list[Tensor] = list(ema.parameters()) if ema is not None else []
    g = epoch_generator(cfg.seed, epoch, device)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    sums = torch.zeros(3, device=device)  # loss, reconstruction, kl (summed over images)
    count = 0
    bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
    for i, (x, y) in enumerate(data.iterate(cfg.batch_size, g)):
        step = epoch * steps_per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, total_steps)
        beta = min(1.0, (epoch + i / steps_per_epoch) / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs > 0 else 1.0
        x = random_affine(x, cfg.augment, g)
        with autocast(device):
            out = model(x, y)
        recon = reconstruction_nll(out.logits.float(), x).mean()
        kl = kl_to_standard_normal(out.mean.float(), out.log_var.float()).mean()
        kl_train = free_bits_kl(out.mean.float(), out.log_var.float(), cfg.free_bits) if cfg.free_bits > 0 else kl
        loss = recon + beta * kl_train
        if cfg.label_weight > 0:
            loss = loss + cfg.label_weight * label_loss(model, x[: cfg.label_batch], y[: cfg.label_batch], device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - min(cfg.ema, (1 + step) / (10 + step)))
        n = x.shape[0]
        sums += torch.stack([recon + kl, recon, kl]).detach() * n
        count += n
        if bar is not None and (i % 10 == 0 or i == steps_per_epoch - 1):
            bar.set_postfix(loss=f"{sums[0].item() / count:.2f}", beta=f"{beta:.2f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    loss, recon, kl = (sums / count).tolist()
    return {"train_nelbo": loss, "train_recon": recon, "train_kl": kl}


def label_scores(model: CVAE, x: Tensor) -> Tensor:
    """-ELBO(x, y) for every label y, at the posterior mean and with KL to N(0, I). (N, 1, H, W) -> (N, C)"""
    n, c = x.shape[0], model.cfg.num_classes
    xs = x.repeat_interleave(c, dim=0)  # (N*C, 1, H, W)
    ys = torch.arange(c, device=x.device).repeat(n)  # (N*C,)
    mean, log_var = model.encoder(xs, ys)
    logits = model.decoder.logits(mean, ys)
    nelbo = reconstruction_nll(logits.float(), xs) + kl_to_standard_normal(mean.float(), log_var.float())
    return -nelbo.view(n, c)


def label_loss(model: CVAE, x: Tensor, y: Tensor, device: torch.device) -> Tensor:
    with autocast(device):
        scores = label_scores(model, x)
    return label_discrimination_loss(scores.float(), y)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


@torch.no_grad()
def encode_all(model: CVAE, data: Batches, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    model.eval()
    means, log_vars = [], []
    for x, y in data.iterate(batch_size):
        m, lv = model.encoder(x, y)
        means.append(m.float())
        log_vars.append(lv.float())
    return torch.cat(means), torch.cat(log_vars)


@torch.no_grad()
def validate(model: CVAE, data: Batches, seed: int = 0) -> dict[str, float]:
    """Held-out -ELBO per image in nats (one posterior sample), KL to the N(0, I) the network is trained against."""
    model.eval()
    torch.manual_seed(seed)
    totals = torch.zeros(3, device=data.x.device)
    for x, y in data.iterate(1024):
        out = model(x, y)
        recon = reconstruction_nll(out.logits, x)
        kl = kl_to_standard_normal(out.mean, out.log_var)
        totals += torch.stack([(recon + kl).sum(), recon.sum(), kl.sum()])
    nelbo, recon, kl = (totals / len(data)).tolist()
    return {"nelbo": nelbo, "recon": recon, "kl": kl}


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


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def load_data(cfg: TrainConfig) -> DataSplits:
    if cfg.dataset == "mnist":
        download_mnist(cfg.data_dir)
    return load_data_dir(cfg.data_dir, val_size=cfg.val_size, seed=cfg.seed)


def main(cfg: TrainConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Train, fit the prior, evaluate, export. -> the exported manifest."""
    device = select_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    run_dir = cfg.resolved_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    command = shlex.join(["python", "-m", "training", *(argv if argv is not None else sys.argv[1:])])

    data = load_data(cfg)
    train, val = Batches.from_digits(data.train, device), Batches.from_digits(data.val, device)
    log.info("data: %d train, %d held-out (%s) on %s", len(train), len(val), data.info["val_source"], device)

    torch.manual_seed(cfg.seed)
    model = CVAE(cfg.model_config()).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []
    ckpt_path = run_dir / CHECKPOINT
    if cfg.resume:
        if not ckpt_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        loaded, payload = load_checkpoint(ckpt_path, map_location=device)
        if loaded.cfg != model.cfg:
            raise SystemExit(f"--resume: {ckpt_path} holds a different model config: {loaded.cfg}")
        model.load_state_dict(loaded.state_dict())
        if payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if ema is not None and payload["ema_state_dict"] is not None:
            ema.load_state_dict(payload["ema_state_dict"])
        start_epoch, history = payload["meta"]["epochs_done"], payload["meta"]["history"]
        log.info("resumed from %s after epoch %d", ckpt_path, start_epoch)

    record = {
        "config": cfg.to_dict(),
        "command": command,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": str(device),
        "data": data.info,
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=1) + "\n")

    def checkpoint(epochs_done: int) -> None:
        meta = {"epochs_done": epochs_done, "history": history, "train_config": cfg.to_dict()}
        save_checkpoint(ckpt_path, model, meta, optimizer.state_dict(), ema.state_dict() if ema is not None else None)

    final = ema if ema is not None else model  # the weights that are validated and exported
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            stats = train_one_epoch(model, train, optimizer, cfg, epoch, device, ema)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            stats.update({f"val_{k}": v for k, v in validate(final, val, seed=cfg.seed).items()})
            stats.update(epoch=epoch + 1, seconds=seconds, samples_per_s=len(train) / seconds)
            history.append(stats)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(stats) + "\n")
            standard = GaussianPrior.standard(model.cfg.num_classes, model.cfg.latent_dim)
            (run_dir / "samples" / f"epoch-{epoch + 1:03d}.png").write_bytes(sample_grid_png(final, standard))
            checkpoint(epoch + 1)
            log.info(
                "epoch %d/%d  train -ELBO %.2f  val -ELBO %.2f (recon %.2f + KL %.2f)  %.1fs (%.0f img/s)",
                epoch + 1, cfg.epochs, stats["train_nelbo"], stats["val_nelbo"], stats["val_recon"], stats["val_kl"],
                seconds, stats["samples_per_s"],
            )  # fmt: skip
    except KeyboardInterrupt:
        checkpoint(epoch)
        log.warning("interrupted: checkpoint saved to %s; continue with --resume", ckpt_path)
        raise

    return finish(final, train, val, data, cfg, history, command, record)


def finish(
    model: CVAE,
    train: Batches,
    val: Batches,
    data: DataSplits,
    cfg: TrainConfig,
    history: list[dict[str, Any]],
    command: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Fit the sampling prior, measure, export the model directory."""
    from training.evaluate import evaluate_model
    from training.export import export_model_dir

    model.eval()
    prior = fit_prior(model, train, cfg)
    (cfg.resolved_run_dir / "samples" / "final.png").write_bytes(
        sample_grid_png(model, prior.to(train.x.device), temperature=cfg.sample_temperature)
    )
    cpu_model = model.to("cpu")
    metrics: dict[str, Any] = {"epochs": len(history), "train_history_last": history[-1] if history else None}
    metrics.update(
        evaluate_model(
            cpu_model.encoder,
            cpu_model.decoder,
            prior,
            data,
            k=cfg.eval_k,
            seed=cfg.seed,
            full=cfg.evaluate,
            temperature=cfg.sample_temperature,
        )
    )
    manifest = export_model_dir(
        cpu_model,
        prior,
        cfg.out,
        data=data.info,
        config={"model": cpu_model.cfg.to_dict(), "training": cfg.to_dict(), "git_commit": record["git_commit"]},
        metrics=metrics,
        reproduce=command,
        temperature=cfg.sample_temperature,
    )
    (cfg.resolved_run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log.info("exported %s to %s", manifest["id"], cfg.out)
    return manifest
