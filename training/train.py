"""The training loop: `main(cfg)` trains the CVAE, fits its sampling prior, evaluates and exports.

The whole dataset lives on the training device as one tensor; batches are index slices of it, so there is
no per-batch host work. Each epoch's randomness (its order and the reparameterisation noise) comes from one
generator seeded from (seed, epoch): a run resumed from an epoch checkpoint continues exactly as if it had never
stopped (on CPU). Under torchrun every process trains on its share of each global batch (training/distributed.py);
the shares' gradients average to the whole batch's.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model.imaging import encode_png, tile_grid
from model.inference import label_log_probs
from model.loss import kl_to_standard_normal, label_invariance_penalty, reconstruction_nll
from model.network import CVAE, LabelAdversary
from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior, sample_latents
from training import distributed
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import DataSplits, Digits, download_mnist, load_data_dir
from training.distributed import SINGLE_PROCESS, Launch

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
ADVERSARY_LR = 1e-3  # Adam, constant: the adversary must keep up with an encoder that keeps moving


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

    def iterate(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """The index rows of each batch: shuffled by `generator`, else in order."""
        n = len(self)
        device = self.x.device
        order = torch.randperm(n, generator=generator, device=device) if generator is not None else None
        for i in range(0, n, batch_size):
            yield (
                order[i : i + batch_size]
                if order is not None
                else torch.arange(i, min(n, i + batch_size), device=device)
            )


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
    """All of one epoch's randomness: the order of the images and the reparameterisation noise."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


class Objective(nn.Module):
    """One step's terms on this process's rows of a batch, per image. What DistributedDataParallel wraps: every
    parameter of the CVAE is used in one forward.

    forward(x (n, 1, H, W), y (n,), eps (n, D), label_rows) -> (reconstruction (n,), KL to N(0, I) (n,),
    -log p(y | x) summed over the first label_rows images (the label-discrimination term), the posterior means
    (n, D), which the label adversary reads).
    """

    def __init__(self, model: CVAE) -> None:
        super().__init__()
        self.model = model
        self.standard = GaussianPrior.standard(model.cfg.num_classes, model.cfg.latent_dim)

    def forward(self, x: Tensor, y: Tensor, eps: Tensor, label_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.model(x, y, eps)
        recon = reconstruction_nll(out.logits.float(), x)
        kl = kl_to_standard_normal(out.mean.float(), out.log_var.float())
        label_nll = recon.new_zeros(())
        if label_rows > 0:
            # -log p(y | x) under the rule /encode infers digits by (Bayes' rule over the labels with the ELBO
            # for log p(x | y), as in hybrid generative-discriminative training, Lasserre et al. 2006), scored with
            # the N(0, I) the network trains against.
            log_probs, _, _ = label_log_probs(self.model.encoder, self.model.decoder, self.standard, x[:label_rows])
            label_nll = F.nll_loss(log_probs, y[:label_rows], reduction="sum")
        return recon, kl, label_nll, out.mean.float()


@dataclass
class Adversary:
    """The label adversary and its own optimiser (it maximises what the encoder minimises)."""

    net: LabelAdversary
    optimizer: torch.optim.Optimizer


@dataclass
class TrainState:
    """What a training step changes, and an epoch checkpoint keeps."""

    model: CVAE
    optimizer: torch.optim.Optimizer
    ema: CVAE | None  # the moving average of the weights, which validation and export use
    adversary: Adversary | None

    @property
    def final(self) -> CVAE:
        return self.ema if self.ema is not None else self.model


def new_state(cfg: TrainConfig, device: torch.device) -> TrainState:
    """A fresh model (initialised from cfg.seed), its optimiser, moving average and label adversary."""
    torch.manual_seed(cfg.seed)
    model = CVAE(cfg.model_config()).to(device)
    adversary = None
    if cfg.adversary_weight > 0:
        net = LabelAdversary(model.cfg).to(device)
        adversary = Adversary(net, torch.optim.Adam(net.parameters(), lr=ADVERSARY_LR))
    return TrainState(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        ema=copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None,
        adversary=adversary,
    )


def _ddp(module: nn.Module, launch: Launch, device: torch.device) -> nn.Module:
    if not launch.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def train_one_epoch(
    state: TrainState,
    data: Batches,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    launch: Launch = SINGLE_PROCESS,
) -> dict[str, float]:
    """One pass over `data` (this process's share of each batch): updates the model, its moving average and the
    label adversary. -> the epoch's mean -ELBO, reconstruction and KL per image, over every process's images."""
    model, optimizer = state.model, state.optimizer
    model.train()
    objective = _ddp(Objective(model), launch, device)
    adversary = _ddp(state.adversary.net, launch, device) if state.adversary is not None else None
    params: list[Tensor] = list(model.parameters())
    ema_params: list[Tensor] = list(state.ema.parameters()) if state.ema is not None else []
    g = epoch_generator(cfg.seed, epoch, device)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    w = launch.world_size
    sums = torch.zeros(3, device=device)  # -ELBO, reconstruction, KL (summed over this process's images)
    bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and launch.is_main)
    for i, rows in enumerate(data.iterate(cfg.batch_size, g)):
        step = epoch * steps_per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, total_steps)
        beta = min(1.0, (epoch + i / steps_per_epoch) / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs > 0 else 1.0
        batch = len(rows)  # the global batch; this process takes its share of the rows and of the noise
        eps = torch.randn(batch, model.cfg.latent_dim, generator=g, device=device)
        label_rows = min(cfg.label_batch, batch) if cfg.label_weight > 0 else 0
        mine = launch.share(rows)
        x, y = data.x[mine], data.y[mine]
        with autocast(device):
            recon, kl, label_nll, mean = objective(x, y, launch.share(eps), launch.share_count(label_rows))
        # Sums over this process's images scaled by w / (global count): DistributedDataParallel averages the
        # gradients over the w processes, which makes them the gradients of the whole batch's means.
        loss = (recon.sum() + beta * kl.sum()) * (w / batch)
        if label_rows > 0:
            loss = loss + cfg.label_weight * label_nll * (w / label_rows)
        if state.adversary is not None and adversary is not None:
            penalty = adversary_step(state.adversary, adversary, mean, y, scale=w / batch)
            loss = loss + cfg.adversary_weight * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if state.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - min(cfg.ema, (1 + step) / (10 + step)))
        sums += torch.stack([(recon + kl).sum(), recon.sum(), kl.sum()]).detach()
        if bar is not None:
            if i % 10 == 0 or i == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{sums[0].item() * w / ((i + 1) * cfg.batch_size):.2f}", beta=f"{beta:.2f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    loss, recon, kl = (distributed.all_sum(launch, sums) / len(data)).tolist()
    return {"train_nelbo": loss, "train_recon": recon, "train_kl": kl}


def adversary_step(adversary: Adversary, module: nn.Module, mean: Tensor, y: Tensor, scale: float) -> Tensor:
    """One step of the label adversary on this process's posterior means (`module`: its net, DDP-wrapped under
    torchrun), then, frozen, its penalty on what the means still give away (times `scale`), for the encoder's loss.

    The adversary reads the posterior mean, not the sampled z: from z the encoder could hide the label behind noise
    (wider posteriors) instead of moving every digit's posteriors into one region (docs/quality.md: the frontier).
    """
    adversary_loss = F.cross_entropy(module(mean.detach()), y, reduction="sum") * scale
    adversary.optimizer.zero_grad(set_to_none=True)
    adversary_loss.backward()
    adversary.optimizer.step()
    net = adversary.net.requires_grad_(False)
    penalty = label_invariance_penalty(net(mean)).sum() * scale
    net.requires_grad_(True)
    return penalty


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A progress bar, when enabled and tqdm (the [train] extra) is installed; None otherwise."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


@torch.no_grad()
def encode_all(model: CVAE, data: Batches, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    model.eval()
    means, log_vars = [], []
    for rows in data.iterate(batch_size):
        m, lv = model.encoder(data.x[rows], data.y[rows])
        means.append(m.float())
        log_vars.append(lv.float())
    return torch.cat(means), torch.cat(log_vars)


@torch.no_grad()
def validate(model: CVAE, data: Batches, seed: int = 0) -> dict[str, float]:
    """Held-out -ELBO per image in nats (one posterior sample), KL to the N(0, I) the network is trained against."""
    model.eval()
    torch.manual_seed(seed)
    totals = torch.zeros(3, device=data.x.device)
    for rows in data.iterate(1024):
        x, y = data.x[rows], data.y[rows]
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


def load_data(cfg: TrainConfig, launch: Launch = SINGLE_PROCESS) -> DataSplits:
    """The digits; with --dataset mnist, downloaded first (by one process per machine under torchrun)."""
    if cfg.dataset == "mnist":
        if launch.local_rank == 0:
            download_mnist(cfg.data_dir)
        distributed.barrier(launch)
    return load_data_dir(cfg.data_dir, val_size=cfg.val_size, seed=cfg.seed)


def main(cfg: TrainConfig, argv: list[str] | None = None) -> dict[str, Any] | None:
    """Train, fit the prior, evaluate, export. -> the exported manifest (None on the processes other than rank 0
    of a torchrun launch, which only train)."""
    requested = select_device(cfg.device)
    launch = distributed.detect(os.environ, requested.type)
    device = distributed.device_of(launch, requested)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    distributed.init(launch, device)
    try:
        return _main(cfg, argv, launch, device)
    finally:
        distributed.shutdown(launch)


def _main(cfg: TrainConfig, argv: list[str] | None, launch: Launch, device: torch.device) -> dict[str, Any] | None:
    command = shlex.join(["python", "-m", "training", *(argv if argv is not None else sys.argv[1:])])
    data = load_data(cfg, launch)
    distributed.check_batches(
        launch, batch_size=cfg.batch_size, label_batch=cfg.label_batch, train_size=len(data.train)
    )
    train, val = Batches.from_digits(data.train, device), Batches.from_digits(data.val, device)
    if launch.is_main:
        log_setup(cfg, launch, data, len(train), len(val), device)
    state = new_state(cfg, device)
    start_epoch, history = 0, list[dict[str, Any]]()
    if cfg.resume:
        start_epoch, history = resume(state, cfg.resolved_run_dir / CHECKPOINT, launch, device)
    if launch.is_main and cfg.evaluate:
        from training.judge import announce_judge, default_cache_dir

        announce_judge(data, default_cache_dir(), cfg.seed)
    record = run_record(cfg, command, launch, device, data, state.model)
    if launch.is_main:
        (cfg.resolved_run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (cfg.resolved_run_dir / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    train_epochs(state, train, val, cfg, launch, device, start_epoch, history)
    if not launch.is_main:
        return None  # rank 0 alone fits the prior, evaluates and exports, over all the data
    return finish(state.final, train, val, data, cfg, history, command, record)


def log_setup(
    cfg: TrainConfig, launch: Launch, data: DataSplits, n_train: int, n_val: int, device: torch.device
) -> None:
    log.info("data: %d train, %d held-out (%s) on %s", n_train, n_val, data.info["val_source"], device)
    if launch.distributed:
        log.info(
            "%d processes (%s): global batch %d = %d per process; learning rate %g",
            launch.world_size, launch.backend, cfg.batch_size, cfg.batch_size // launch.world_size, cfg.lr,
        )  # fmt: skip


def run_record(
    cfg: TrainConfig, command: str, launch: Launch, device: torch.device, data: DataSplits, model: CVAE
) -> dict[str, Any]:
    """What run.json says of a run: its config, command line, git commit, torch, device, processes and data."""
    return {
        "config": cfg.to_dict(),
        "command": command,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": str(device),
        "distributed": {
            **launch.to_dict(),
            "global_batch": cfg.batch_size,
            "per_process_batch": cfg.batch_size // launch.world_size,
            "lr": cfg.lr,
        },
        "data": data.info,
        "model_parameters": sum(p.numel() for p in model.parameters()),
    }


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


def save_state(
    path: Path, state: TrainState, cfg: TrainConfig, launch: Launch, epochs_done: int, history: list[dict[str, Any]]
) -> None:
    """The epoch checkpoint: everything `resume` needs to continue as if the run had never stopped."""
    meta = {"epochs_done": epochs_done, "history": history, "train_config": cfg.to_dict(), **launch.to_dict()}
    adversary_state = None
    if state.adversary is not None:
        adversary_state = {
            "state_dict": state.adversary.net.state_dict(),
            "optimizer": state.adversary.optimizer.state_dict(),
        }
    save_checkpoint(
        path,
        state.model,
        meta,
        state.optimizer.state_dict(),
        state.ema.state_dict() if state.ema is not None else None,
        adversary_state,
    )


def resume(state: TrainState, path: Path, launch: Launch, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    """Load an epoch checkpoint into `state`. -> (epochs done, their history). SystemExit if it does not fit."""
    if not path.is_file():
        raise SystemExit(f"--resume: no checkpoint at {path}")
    loaded, payload = load_checkpoint(path, map_location=device)
    if loaded.cfg != state.model.cfg:
        raise SystemExit(f"--resume: {path} holds a different model config: {loaded.cfg}")
    saved_world = payload["meta"].get("world_size", 1)
    if saved_world != launch.world_size:
        raise SystemExit(
            f"--resume: {path} was written by {saved_world} process(es), this run has {launch.world_size}: "
            f"resume with the same world size (torchrun --nproc_per_node {saved_world} ...)"
        )
    if (payload.get("adversary") is None) != (state.adversary is None):
        raise SystemExit(f"--resume: {path} was trained with a different --adversary-weight (on/off)")
    state.model.load_state_dict(loaded.state_dict())
    if payload["optimizer"] is not None:
        state.optimizer.load_state_dict(payload["optimizer"])
    if state.ema is not None and payload["ema_state_dict"] is not None:
        state.ema.load_state_dict(payload["ema_state_dict"])
    if state.adversary is not None:
        state.adversary.net.load_state_dict(payload["adversary"]["state_dict"])
        state.adversary.optimizer.load_state_dict(payload["adversary"]["optimizer"])
    epochs_done = payload["meta"]["epochs_done"]
    if launch.is_main:
        log.info("resumed from %s after epoch %d", path, epochs_done)
    return epochs_done, payload["meta"]["history"]


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
        config={
            "model": cpu_model.cfg.to_dict(),
            "training": cfg.to_dict(),
            "distributed": record["distributed"],
            "git_commit": record["git_commit"],
        },
        metrics=metrics,
        reproduce=command,
        temperature=cfg.sample_temperature,
    )
    (cfg.resolved_run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log.info("exported %s to %s", manifest["id"], cfg.out)
    return manifest
