"""`python -m training.evaluation --model DIR --data-dir DIR`: every figure of a model directory, as one JSON object
(training/evaluation/evaluate.py says which)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from model.artifacts import load_model_dir
from model.manifest import MAX_TEMPERATURE, ModelDirError, is_temperature
from training.data import DataError, load_data_dir
from training.evaluation.evaluate import OUTSIDE_COUNT, evaluate_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory (as exported by training)")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of MNIST IDX files")
    parser.add_argument("--k", type=int, default=100, help="importance samples for the NLL bound (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the model's training seed)")
    parser.add_argument("--val-size", type=int, default=None, help="held-out split size (default: the model's)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the judge is cached")
    parser.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: the model's, as the service)"
    )
    parser.add_argument(
        "--outside-count", type=int, default=OUTSIDE_COUNT,
        help=f"uploads of each kind not from MNIST (training.testsets); 0: none (default {OUTSIDE_COUNT})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.outside_count < 0:
        parser.error("--outside-count must be >= 0")
    if args.k < 1:
        parser.error("--k must be at least 1")
    if args.temperature is not None and not is_temperature(args.temperature):
        parser.error(f"--temperature must be in [0, {MAX_TEMPERATURE:g}], got {args.temperature}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        model = load_model_dir(args.model)
        training_cfg = model.manifest.get("config", {}).get("training", {})
        seed = args.seed if args.seed is not None else int(training_cfg.get("seed", 0))
        val_size = args.val_size if args.val_size is not None else int(training_cfg.get("val_size", 1000))
        data = load_data_dir(args.data_dir, val_size=val_size, seed=seed)
    except (ModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(seed)
    metrics = evaluate_model(
        model.encoder,
        model.decoder,
        model.prior,
        data,
        k=args.k,
        seed=seed,
        cache_dir=args.cache_dir,
        temperature=model.temperature if args.temperature is None else args.temperature,
        reader=model.reader,
        outside_count=args.outside_count if model.card.is_digits else 0,  # the sets of uploads are of digits
        preprocessing=model.card.preprocessing,
        draw=model.draw,
    )
    metrics["model_id"] = model.id
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
