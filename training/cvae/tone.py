"""The tone step (--tone-curves): each class's tone curve (model/tone.py) fitted on the training images and the
model's own samples, and written into the model directory (the figures of what it then draws: training/evaluation)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from model.artifacts import load_model_dir
from model.manifest import MANIFEST_FILE, TONE_FILE, sha256_file
from model.prior import sample_latents
from model.tone import KNOTS, ToneCurves, fit_tone
from training.data import DataSplits
from training.export import model_id, rewrite_model_dir

log = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 300  # the model's samples per class whose levels a curve is fitted to
SEED_OFFSET = 1000  # the fit's samples are drawn from seed + SEED_OFFSET + class: none is a sample evaluation judges


def add_tone(model_dir: Path, curves: ToneCurves, record: dict[str, Any]) -> dict[str, Any]:
    """Write tone.pt into model_dir and list it in the manifest (with record), replacing the directory only once it
    is written. The model's id changes with its curves. -> the manifest."""
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())

    def add(folder: Path) -> None:
        curves.save(folder / TONE_FILE)
        manifest["artifacts"][TONE_FILE] = sha256_file(folder / TONE_FILE)
        manifest["tone"] = {"file": TONE_FILE, **record}
        manifest["id"] = model_id(manifest["artifacts"])

    rewrite_model_dir(model_dir, manifest, add)
    return manifest


@torch.no_grad()
def fit_tone_curves(model_dir: Path, data: DataSplits, *, seed: int) -> dict[str, Any]:
    """Fit the model's tone curves on data's training images and add them to model_dir. -> the manifest."""
    model = load_model_dir(model_dir)
    t = model.temperature

    def samples(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_latents(model.prior, [c], SAMPLES_PER_CLASS, seed=seed + SEED_OFFSET + c, temperature=t)

    train = data.train
    curves = fit_tone(train.images, train.labels, samples, model.decoder, num_classes=model.num_classes, seed=seed)
    record = {
        "knots": KNOTS,
        "fitted_on": f"{len(train)} training images of {data.info.get('name')} and {SAMPLES_PER_CLASS} samples "
        f"of each class at temperature {t:g}",
        "seed": seed,
    }
    log.info("tone curves: %s", record["fitted_on"])
    return add_tone(model_dir, curves, record)
