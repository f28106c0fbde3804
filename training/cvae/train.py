"""The CVAE's training step and epoch: the whole dataset lives on the training device as one tensor; batches are
index slices of it, so there is no per-batch host work. Each epoch's randomness (its order and the reparameterisation
noise) comes from one CPU generator seeded from (seed, epoch), its numbers moved to the device: a run resumed from an
epoch checkpoint continues exactly as if it had never stopped (on CPU), and every process and every device draws the
same numbers. Under torchrun every process trains on its share of each global batch
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
from training.device import select_amp

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
        order = torch.randperm(n, generator=generator).to(device) if generator is not None else None
        for i in range(0, n, batch_size):
            yield (
                order[i : i + batch_size]
                if order is not None
                else torch.arange(i, min(n, i + batch_size), device=device)
            )


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass in `amp` ("bf16", "fp16"; training/device.py chooses); "off": full precision."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over the first 2% of steps, then cosine decay to lr/20 (or constant)."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = max(1, total_steps // 50)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """All of one epoch's randomness: the order of the images and the reparameterisation noise. A CPU generator
    whatever the device (its numbers are moved there), so that every process and every GPU model draws the same."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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
        # On the model's device (a prior is no Module: a later .to() would not move it).
        device = next(model.parameters()).device
        self.standard = GaussianPrior.standard(model.cfg.num_classes, model.cfg.latent_dim).to(device)

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
    module: nn.Module  # what a step calls: net, wrapped in DistributedDataParallel under torchrun


@dataclass
class TrainState:
    """What a training step changes, and an epoch checkpoint keeps (all but the gradient scaler's running scale,
    which finds its level again within a few steps)."""

    model: CVAE
    optimizer: torch.optim.Optimizer
    ema: CVAE | None  # the moving average of the weights, which validation and export use
    adversary: Adversary | None
    objective: nn.Module  # what a step calls: Objective(model), wrapped in DistributedDataParallel under torchrun
    amp: str  # the forward pass's precision: "bf16", "fp16" or "off" (training/device.py)
    scaler: torch.amp.GradScaler | None  # fp16's loss scaling; None otherwise

    @property
    def final(self) -> CVAE:
        return self.ema if self.ema is not None else self.model


def new_state(cfg: TrainConfig, device: torch.device, launch: Launch = SINGLE_PROCESS) -> TrainState:
    """A fresh model (initialised from cfg.seed), its optimiser, moving average and label adversary, wrapped once
    for the whole run in DistributedDataParallel under torchrun (the process group must exist), in the precision
    --amp chooses on `device`."""
    torch.manual_seed(cfg.seed)
    model = CVAE(cfg.model_config()).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    adversary = None
    if cfg.adversary_weight > 0:
        net = LabelAdversary(model.cfg).to(device)
        adversary = Adversary(net, torch.optim.Adam(net.parameters(), lr=ADVERSARY_LR), _ddp(net, launch, device))
    amp = select_amp(cfg.amp, device)
    return TrainState(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        ema=ema,
        adversary=adversary,
        objective=_ddp(Objective(model), launch, device),
        amp=amp,
        scaler=torch.amp.GradScaler(device.type) if amp == "fp16" else None,
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
    model, optimizer, objective, scaler = state.model, state.optimizer, state.objective, state.scaler
    model.train()
    params: list[Tensor] = list(model.parameters())
    ema_params: list[Tensor] = list(state.ema.parameters()) if state.ema is not None else []
    g = epoch_generator(cfg.seed, epoch)
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
        eps = torch.randn(batch, model.cfg.latent_dim, generator=g).to(device)
        label_rows = min(cfg.label_batch, batch) if cfg.label_weight > 0 else 0
        mine = launch.share(rows)
        x, y = data.x[mine], data.y[mine]
        with autocast(device, state.amp):
            recon, kl, label_nll, mean = objective(x, y, launch.share(eps), launch.share_count(label_rows))
        # Sums over this process's images scaled by w / (global count): DistributedDataParallel averages the
        # gradients over the w processes, which makes them the gradients of the whole batch's means.
        loss = (recon.sum() + beta * kl.sum()) * (w / batch)
        if label_rows > 0:
            loss = loss + cfg.label_weight * label_nll * (w / label_rows)
        if state.adversary is not None:
            penalty = adversary_step(state.adversary, mean, y, scale=w / batch)
            loss = loss + cfg.adversary_weight * penalty
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: the loss scaled up so small gradients do not underflow, unscaled to step
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
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


def adversary_step(adversary: Adversary, mean: Tensor, y: Tensor, scale: float) -> Tensor:
    """One step of the label adversary on this process's posterior means (float32, outside autocast), then, frozen,
    its penalty on what the means still give away (times `scale`), for the encoder's loss.

    The adversary reads the posterior mean, not the sampled z: from z the encoder could hide the label behind noise
    (wider posteriors) instead of moving every digit's posteriors into one region (docs/quality.md: the frontier).
    """
    adversary_loss = F.cross_entropy(adversary.module(mean.detach()), y, reduction="sum") * scale
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
