"""The one save/load for training checkpoints: plain types only, so torch.load(weights_only=True) works."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.network import CVAE, CVAEConfig


def save_checkpoint(
    path: str | Path,
    model: CVAE,
    meta: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    ema_state_dict: dict[str, Any] | None = None,
    adversary: dict[str, Any] | None = None,
) -> None:
    """Write {"config", "state_dict", "meta", "optimizer", "ema_state_dict", "adversary"} atomically: a crash never
    leaves half a file. The optimiser's state, the moving average of the weights and the label adversary (its
    "state_dict" and "optimizer") are there to resume training."""
    path = Path(path)
    payload = {
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
        "optimizer": optimizer_state,
        "ema_state_dict": ema_state_dict,
        "adversary": adversary,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CVAE, dict[str, Any]]:
    """-> (model in eval mode, the whole payload: "meta", "optimizer", "ema_state_dict" and "adversary"
    included)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    model = CVAE(CVAEConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload
