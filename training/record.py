"""What run.json says of a run: its config, command line, git commit, torch, device, processes and data."""

from __future__ import annotations

import subprocess
from typing import Any

import torch

from training.config import TrainConfig
from training.cvae.distributed import Launch
from training.data import DataSplits


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run_record(
    cfg: TrainConfig, command: str, launch: Launch, device: torch.device, data: DataSplits, parameters: int
) -> dict[str, Any]:
    """run.json's contents; `parameters`: the CVAE's parameter count."""
    return {
        "config": cfg.to_dict(),
        "command": command,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": str(device),
        "distributed": {
            **launch.to_dict(),
            "global_batch": cfg.batch_size,
            "per_process_batch": cfg.batch_size // launch.world_size,
            "lr": cfg.lr,
        },
        "data": data.info,
        "model_parameters": parameters,
    }
