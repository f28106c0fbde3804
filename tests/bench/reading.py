"""Reading digits that are not MNIST: /encode's reading against a plain CNN trained on the same MNIST digits,
side by side on the same images, in one run.

    python -m tests.bench.reading --model artifacts/default --data-dir ../shared/data/mnist-8500 [--count 300]

The reference is the judge's architecture and training (training/evaluation/judge.py: three convolutions, light random
affine augmentation, 16 epochs), trained here on all the data's digits (8,500 for mnist-8500: more than the model's
reader saw). Each set (training.evaluation.testsets, seed 0) is pre-processed once by the service's own code; both read
the same 28x28 images. Prints, per set: /encode's accuracy, the reference's, the encoded hand re-drawn as all ten digits
and judged by the shipped judge, and the calibration error of /encode's probabilities.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from model.artifacts import load_model_dir
from training.data import Digits, load_data_dir
from training.evaluation.evaluate import outside_figures
from training.evaluation.judge import shipped_judge, train_judge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.reading", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/default"), help="model directory")
    parser.add_argument("--data-dir", type=Path, required=True, help="the MNIST digits the reference trains on")
    parser.add_argument("--count", type=int, default=300, help="uploads of each kind (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sets and of the reference (default 0)")
    args = parser.parse_args(argv)
    model = load_model_dir(args.model)
    data = load_data_dir(args.data_dir, val_size=1000, seed=args.seed)
    every = Digits(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
    start = time.perf_counter()
    reference, _ = train_judge(dataclasses.replace(data, train=every), seed=args.seed)
    print(f"reference CNN trained on {len(every)} digits in {time.perf_counter() - start:.0f} s")
    with torch.no_grad():
        ours = outside_figures(model.encoder, model.decoder, model.prior, shipped_judge(), reader=model.reader,
                               reference=reference, count=args.count, seed=args.seed)  # fmt: skip
    print(f"{'set':<14}{'/encode':>9}{'reference CNN':>15}{'ratio':>7}{'re-drawn':>10}{'calibration err':>17}")
    for kind, figures in ours.items():
        if "skipped" in figures:
            print(f"{kind:<14}skipped: {figures['skipped']}")
            continue
        enc, ref = figures["encode_accuracy"], figures["reference_accuracy"]
        print(f"{kind:<14}{enc:>9.3f}{ref:>15.3f}{enc / ref:>7.2f}{figures['redrawn_accuracy']:>10.3f}"
              f"{figures['calibration_error']:>17.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
