"""Training throughput: the default configuration against the classic baseline, side by side in one run.

    python -m tests.bench.train_speed --data-dir ../shared/data/mnist-8500 [--rounds 3] [--device cpu]

The classic baseline is the pytorch/examples VAE made conditional (MLP 784+10 -> 400 -> 20, Adam 1e-3, no
label-discrimination term, no weight averaging). Our default adds a conv encoder, a wider MLP decoder, the
label-discrimination term (each step scores 32 images under all ten labels), the label adversary and an EMA of
the weights.
Epochs of the two alternate, so a noisy machine slows both alike; prints training images per second for
each round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from training.config import TrainConfig
from training.cvae.train import Batches, new_state, train_one_epoch
from training.data import load_data_dir
from training.device import select_device

CLASSIC = dict(
    encoder="mlp", hidden=(400,), encoder_hidden=(400,), latent_dim=20, lr=1e-3, schedule="constant",
    kl_warmup_epochs=0.0, weight_decay=0.0, label_weight=0.0, adversary_weight=0.0, ema=0.0, prior="standard",
)  # fmt: skip


def epoch_rate(cfg: TrainConfig, data: Batches, device: torch.device, epoch: int) -> float:
    state = new_state(cfg, device)
    train_one_epoch(state, data, cfg, 0, device)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_one_epoch(state, data, cfg, epoch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    data = Batches.from_digits(load_data_dir(args.data_dir).train, device)
    ours = TrainConfig(epochs=2, progress=False)
    classic = dataclasses.replace(ours, **CLASSIC)  # type: ignore[arg-type]
    rates: dict[str, list[float]] = {"default": [], "classic": []}
    print(f"device {device}, {torch.get_num_threads()} threads, {len(data)} training images per epoch")
    for r in range(args.rounds):
        for name, cfg in (("default", ours), ("classic", classic)):
            rates[name].append(epoch_rate(cfg, data, device, epoch=1))
            print(f"round {r + 1}  {name:8s} {rates[name][-1]:8.0f} images/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median: default {med['default']:.0f} images/s, classic {med['classic']:.0f} images/s, "
          f"ratio default/classic {med['default'] / med['classic']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
