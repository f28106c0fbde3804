"""The one save/load for training checkpoints (plain types only, so torch.load(weights_only=True) works), and the
epoch checkpoint a run resumes from."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.network import CVAE, CVAEConfig
from training.config import TrainConfig
from training.cvae.distributed import Launch
from training.cvae.train import TrainState

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


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


def save_state(
    path: Path, state: TrainState, cfg: TrainConfig, launch: Launch, epochs_done: int, history: list[dict[str, Any]]
) -> None:
    """The epoch checkpoint: everything `resume` needs to continue as if the run had never stopped."""
    meta = {"epochs_done": epochs_done, "history": history, "train_config": cfg.to_dict(), **launch.to_dict()}
    adversary_state = None
    if state.adversary is not None:
        adversary_state = {
            "state_dict": state.adversary.net.state_dict(),
            "optimizer": state.adversary.optimizer.state_dict(),
        }
    save_checkpoint(
        path,
        state.model,
        meta,
        state.optimizer.state_dict(),
        state.ema.state_dict() if state.ema is not None else None,
        adversary_state,
    )


def resume(state: TrainState, path: Path, launch: Launch, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    """Load an epoch checkpoint into `state`. -> (epochs done, their history). SystemExit if it does not fit."""
    if not path.is_file():
        raise SystemExit(f"--resume: no checkpoint at {path}")
    loaded, payload = load_checkpoint(path, map_location="cpu")  # load_state_dict moves each to its device
    if loaded.cfg != state.model.cfg:
        raise SystemExit(f"--resume: {path} holds a different model config: {loaded.cfg}")
    saved_world = payload["meta"].get("world_size", 1)
    if saved_world != launch.world_size:
        raise SystemExit(
            f"--resume: {path} was written by {saved_world} process(es), this run has {launch.world_size}: "
            f"resume with the same world size (torchrun --nproc_per_node {saved_world} ...)"
        )
    if (payload.get("adversary") is None) != (state.adversary is None):
        raise SystemExit(f"--resume: {path} was trained with a different --adversary-weight (on/off)")
    state.model.load_state_dict(loaded.state_dict())
    if payload["optimizer"] is not None:
        state.optimizer.load_state_dict(payload["optimizer"])
    if state.ema is not None and payload["ema_state_dict"] is not None:
        state.ema.load_state_dict(payload["ema_state_dict"])
    if state.adversary is not None:
        state.adversary.net.load_state_dict(payload["adversary"]["state_dict"])
        state.adversary.optimizer.load_state_dict(payload["adversary"]["optimizer"])
    epochs_done = payload["meta"]["epochs_done"]
    if launch.is_main:
        log.info("resumed from %s after epoch %d", path, epochs_done)
    return epochs_done, payload["meta"]["history"]
