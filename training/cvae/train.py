"""The CVAE's training step and epoch: the whole dataset lives on the training device as one tensor; batches are
index slices of it, so there is no per-batch host work. Each epoch's randomness (its order and the reparameterisation
noise) comes from one generator seeded from (seed, epoch): a run resumed from an epoch checkpoint continues exactly as
if it had never stopped (on CPU). Under torchrun every process trains on its share of each global batch
(training/cvae/distributed.py); the shares' gradients average to the whole batch's.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model.inference import label_log_probs
from model.loss import kl_to_standard_normal, label_invariance_penalty, reconstruction_nll
from model.network import CVAE, LabelAdversary
from model.prior import GaussianPrior
from training.config import TrainConfig
from training.cvae import distributed
from training.cvae.distributed import SINGLE_PROCESS, Launch
from training.data import Digits

ADVERSARY_LR = 1e-3  # Adam, constant: the adversary must keep up with an encoder that keeps moving


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
