"""`python -m training`: every step that makes a model directory from MNIST-format digits (training/steps.py)."""

from __future__ import annotations

import logging
import sys

from training.config import parse_config
from training.data import DataError
from training.steps import main


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        main(cfg, argv)
    except DataError as e:
        logging.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
