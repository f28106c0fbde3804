"""Every command of the project answers --help: exit status 0 and its usage on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    "training",  # python -m training
    "training.evaluation",
    "training.evaluation.judge",
    "training.evaluation.conditions_figures",
    "app",
    "app.inference.child",  # started by the service, not by hand, but a command all the same
    "tests.bench.serve",
    "tests.bench.oip",
    "tests.bench.apps",
    "tests.bench.train_speed",
    "tests.bench.train_ddp",
    "tests.bench.replicas",
    "tests.bench.models",
    "tests.bench.gpu",  # refuses to run without CUDA, but answers --help anywhere
]


@pytest.mark.slow
@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_answers_help(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:") and "--help" in proc.stdout, proc.stdout[:500]
