"""The seven kinds of digits in poor conditions (training/evaluation/conditions.py) read by a model directory's
/encode, beside a plain CNN on the same images, with the calibration error of /encode's probabilities:

    python -m training.evaluation.conditions_figures --model artifacts/default [--data-dir ../shared/data/mnist-8500]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from model.artifacts import load_model_dir
from model.imaging import decode_image, to_mnist
from model.uploads import ImageError
from training.data import Digits, load_data_dir
from training.evaluation.conditions import KINDS, make_set
from training.evaluation.figures import calibration_error
from training.evaluation.judge import Judge, predict, shipped_judge, train_judge
from training.evaluation.uploads import MAX_PIXELS, read_digits

# The top probability from which the page gives a reading as sure: SURE in app/static/page.js, which
# tests/app/test_page.py checks this equals.
SURE = 0.9


@torch.no_grad()
def figures(
    model_dir: Path, *, count: int, seed: int, kinds: Sequence[str] = KINDS, reference: Judge | None = None
) -> dict[str, Any]:
    """Per kind: the share `model_dir`'s /encode reads right (an upload refused as blank counts as misread), how
    many it refuses, the expected calibration error of its probabilities, the share it reads at SURE or more and how
    many of those are right, and the share a plain CNN reads right from the same 28x28 images: the shipped judge
    (trained on the model's 7,500 training digits), and `reference` when given."""
    model, judge = load_model_dir(model_dir), shipped_judge()
    out: dict[str, Any] = {}
    for kind in kinds:
        images, labels, refused = [], [], 0
        for data, digit in make_set(kind, count, seed=seed):
            try:
                images.append(to_mnist(decode_image(data, MAX_PIXELS)))
                labels.append(digit)
            except ImageError:
                refused += 1
        x, y = torch.stack(images), torch.tensor(labels)
        probs, _ = read_digits(model.encoder, model.decoder, model.prior, x, model.reader)
        sure = probs.max(1).values >= SURE
        out[kind] = {
            "count": count,
            "refused": refused,
            "encode_accuracy": float((probs.argmax(1) == y).sum()) / count,
            "calibration_error": calibration_error(probs, y),
            "sure_share": float(sure.sum()) / count,
            "sure_accuracy": float((probs.argmax(1) == y)[sure].float().mean()) if sure.any() else float("nan"),
            "judge_accuracy": float((predict(judge, x)[0] == y).sum()) / count,
        }
        if reference is not None:
            out[kind]["reference_accuracy"] = float((predict(reference, x)[0] == y).sum()) / count
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation.conditions_figures", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, default=Path("artifacts/default"), help="model directory")
    parser.add_argument("--count", type=int, default=300, help="uploads of each kind (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sets and of the reference (default 0)")
    parser.add_argument("--kind", choices=KINDS, action="append", help="a kind to measure (default: all)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="MNIST digits to train a reference CNN on (all), as tests.bench.reading does")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    torch.set_num_threads(args.threads)
    reference = None
    if args.data_dir is not None:
        data = load_data_dir(args.data_dir, val_size=1000, seed=args.seed)
        every = Digits(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
        reference, _ = train_judge(dataclasses.replace(data, train=every), seed=args.seed)
    result = figures(args.model, count=args.count, seed=args.seed, kinds=args.kind or KINDS, reference=reference)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
