"""The judge: a small CNN digit classifier, trained on the training split only, separate from the CVAE.

Evaluation uses it to tell whether generated digits are the digit asked for, and its penultimate-layer
features for the Frechet distance between generated and real digits.

A judge must never have seen the held-out digits it judges. The repository ships one (judge.pt beside this file),
trained on the 7,500 training digits of mnist-8500's default split; it is used wherever that holds: for that split
itself, and for any folder whose held-out set is the official MNIST test set (t10k, checked by its sha256), which
the training set never overlaps. Elsewhere a judge is trained on the data's own training split (about a minute
on two CPU cores for 7,500 digits) and cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.augment import random_affine
from training.data import MNIST_SHA256, TEST_IMAGES, TEST_LABELS, DataSplits

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


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cvae-digits"


SHIPPED = Path(__file__).with_name("judge.pt")  # {"state_dict", "val_accuracy", "data"}: see the module docstring


def _key(data: DataSplits, seed: int) -> str:
    key_src = json.dumps({"v": JUDGE_VERSION, "seed": seed, "data": data.info}, sort_keys=True)
    return hashlib.sha256(key_src.encode()).hexdigest()[:20]


def _heldout_is_mnist_test_set(info: dict[str, Any]) -> bool:
    files = info.get("files", {})
    return info.get("val_source") == "t10k" and all(
        files.get(f"{name}.gz") == MNIST_SHA256[f"{name}.gz"] for name in (TEST_IMAGES, TEST_LABELS)
    )


def _split(info: dict[str, Any]) -> dict[str, Any]:
    """What decides which digits a split holds out (not the folder's name)."""
    return {k: info.get(k) for k in ("files", "val_source", "val_size", "seed")}


def shipped_judge_applies(data: DataSplits, seed: int = 0) -> bool:
    """Whether the shipped judge never saw `data`'s held-out digits (see the module docstring)."""
    if not SHIPPED.is_file():
        return False
    trained_on = torch.load(SHIPPED, weights_only=True)["data"]
    same_split = _split(data.info) == _split(trained_on) and seed == trained_on["seed"]
    return same_split or _heldout_is_mnist_test_set(data.info)


def shipped_judge() -> Judge:
    judge = Judge()
    judge.load_state_dict(torch.load(SHIPPED, weights_only=True)["state_dict"])
    return judge.eval()


def _cache_path(data: DataSplits, cache_dir: Path, seed: int) -> Path:
    return cache_dir / f"judge-{_key(data, seed)}.pt"


def announce_judge(data: DataSplits, cache_dir: Path, seed: int = 0) -> None:
    """Say, before training starts, that evaluation at export will first train a judge (when it will)."""
    if not shipped_judge_applies(data, seed) and not _cache_path(data, cache_dir, seed).is_file():
        log.info(
            "the evaluation at export will first train its judge classifier on the %d training images (about a "
            "minute per 7,500 images on 2 CPU cores; cached in %s afterwards); --no-evaluate skips the judge",
            len(data.train), cache_dir,
        )  # fmt: skip


def cached_judge(data: DataSplits, cache_dir: Path, seed: int = 0) -> tuple[Judge, float]:
    """The shipped judge where it applies, else train_judge, cached on disk under a key of the data files, the
    split and JUDGE_VERSION. -> (judge, its accuracy on data.val)."""
    if shipped_judge_applies(data, seed):
        judge = shipped_judge()
        pred, _ = predict(judge, data.val.images.unsqueeze(1).float() / 255)
        return judge, (pred == data.val.labels).float().mean().item()
    path = _cache_path(data, cache_dir, seed)
    if path.is_file():
        payload = torch.load(path, weights_only=True)
        judge = Judge()
        judge.load_state_dict(payload["state_dict"])
        return judge.eval(), float(payload["val_accuracy"])
    log.info("training the judge classifier on %d images (cached afterwards in %s)", len(data.train), cache_dir)
    judge, acc = train_judge(data, seed=seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": judge.state_dict(), "val_accuracy": acc, "data": data.info}, tmp)
    tmp.replace(path)
    return judge, acc


def main(argv: list[str] | None = None) -> int:
    """Rebuild the shipped judge: python -m training.evaluation.judge --data-dir ../shared/data/mnist-8500"""
    import argparse
    import sys

    from training.data import DataError, load_data_dir

    parser = argparse.ArgumentParser(prog="python -m training.evaluation.judge", description=main.__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of MNIST IDX files")
    parser.add_argument("--val-size", type=int, default=1000, help="held-out split size (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of training (default 0)")
    parser.add_argument("--out", type=Path, default=SHIPPED, help=f"where to write it (default {SHIPPED})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        data = load_data_dir(args.data_dir, val_size=args.val_size, seed=args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    judge, acc = train_judge(data, seed=args.seed)
    torch.save({"state_dict": judge.state_dict(), "val_accuracy": acc, "data": data.info}, args.out)
    log.info("judge written to %s: %.1f%% of the %d held-out digits right", args.out, 100 * acc, len(data.val))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
