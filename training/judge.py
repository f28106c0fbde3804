"""The judge: a small CNN digit classifier, trained on the training split only, separate from the CVAE.

Evaluation uses it to tell whether generated digits are the digit asked for, and its penultimate-layer
features for the Frechet distance between generated and real digits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.augment import random_affine
from training.data import DataSplits

log = logging.getLogger(__name__)

JUDGE_VERSION = 2  # bump when the architecture or its training changes, so caches are not reused
FEATURES = 64  # width of the penultimate layer


class Judge(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),  # (N, 32, 28, 28)
            nn.SiLU(),
            nn.MaxPool2d(2),  # (N, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),  # (N, 64, 7, 7)
            nn.Conv2d(64, 64, 3, padding=1),
            nn.SiLU(),
            nn.Flatten(),  # (N, 3136)
            nn.Linear(64 * 7 * 7, FEATURES),
            nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (N, FEATURES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))  # (N, C) logits


@torch.no_grad()
def predict(judge: Judge, x: Tensor, batch: int = 1000) -> tuple[Tensor, Tensor]:
    """-> (predicted labels (N,), penultimate features (N, FEATURES)) for images (N, 1, 28, 28) in [0, 1]."""
    judge.eval()
    labels, feats = [], []
    for i in range(0, x.shape[0], batch):
        f = judge.features(x[i : i + batch])
        feats.append(f)
        labels.append(judge.head(f).argmax(dim=1))
    return torch.cat(labels), torch.cat(feats)


@torch.enable_grad()
def train_judge(data: DataSplits, epochs: int = 16, seed: int = 0) -> tuple[Judge, float]:
    """Train on data.train with augmentation. -> (judge, its accuracy on data.val)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = data.train.images.unsqueeze(1).float() / 255
    y = data.train.labels
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * -(-x.shape[0] // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        judge.train()
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(judge(random_affine(x[idx], 1.0, g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    pred, _ = predict(judge, data.val.images.unsqueeze(1).float() / 255)
    return judge.eval(), (pred == data.val.labels).float().mean().item()


def cached_judge(data: DataSplits, cache_dir: Path, seed: int = 0) -> tuple[Judge, float]:
    """train_judge, cached on disk under a key of the data files, the split and JUDGE_VERSION."""
    key_src = json.dumps({"v": JUDGE_VERSION, "seed": seed, "data": data.info}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    path = cache_dir / f"judge-{key}.pt"
    if path.is_file():
        payload = torch.load(path, weights_only=True)
        judge = Judge()
        judge.load_state_dict(payload["state_dict"])
        return judge.eval(), float(payload["val_accuracy"])
    log.info("training the judge classifier (cached afterwards in %s)", cache_dir)
    judge, acc = train_judge(data, seed=seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": judge.state_dict(), "val_accuracy": acc}, tmp)
    tmp.replace(path)
    return judge, acc
