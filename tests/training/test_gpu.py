"""On a GPU, in one go: one epoch trained on CUDA, exported and served; the one command under torchrun over NCCL on
every GPU there is. Skipped cleanly where there is no CUDA device (`-m gpu` selects them; they are slow too).
The figures (CUDA epoch against the CPU's, NCCL, serving): python -m tests.bench.gpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from model.artifacts import load_model_dir
from tests.training.test_one_command import OPTIONS
from training.__main__ import cli

ROOT = Path(__file__).resolve().parents[2]
CUDA_OPTIONS = [o if o != "cpu" else "cuda" for o in OPTIONS]  # the golden run's tiny options, on CUDA

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_one_cuda_epoch_makes_a_whole_model_that_the_service_serves(tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert cli([*CUDA_OPTIONS, "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["device"].startswith("cuda") and record["amp"] in ("bf16", "fp16")
    assert load_model_dir(out).reader is not None  # the reader's steps ran too
    with TestClient(create_app(Settings(model_dir=out))) as client:
        r = client.post("/generate", json={"digit": 3})
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_torchrun_trains_over_nccl_on_every_gpu(tmp_path: Path) -> None:
    n = torch.cuda.device_count()
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "gpu", "-m", "training"]
    args += [*CUDA_OPTIONS, "--out", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run"), "--no-evaluate"]
    args += ["--batch-size", str(16 * n), "--label-batch", str(4 * n)]  # global batches every world size splits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    world = json.loads((tmp_path / "run" / "run.json").read_text())["distributed"]
    assert world["world_size"] == n and world["backend"] == "nccl"
