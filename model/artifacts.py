"""The model directory: the contract between export (training/export.py) and everything that serves it.

    decoder.pt     TorchScript  forward(z: float32[N, D], y: int64[N]) -> float32[N, 1, 28, 28] in [0, 1]
                                logits(z, y) -> the same before the sigmoid
    encoder.pt     TorchScript  forward(x: float32[N, 1, 28, 28] in [0, 1], y: int64[N])
                                -> (mean: float32[N, D], log_var: float32[N, D])
    reader.pt      (optional, model dirs from 2026-12 on) TorchScript  forward(x: float32[N, 1, 28, 28] in [0, 1])
                   -> log p(y | x) float32[N, C] from the discriminative reader; attribute generative_weight
    prior.pt       (when the prior is "aggregate_posterior") {"kind", "means": float32[10, M, D],
                   "log_vars": float32[10, M, D]}, plain tensors (torch.load(weights_only=True))
    manifest.json  format_version, id, latent_dim, image_shape, labels, prior, data, config, metrics,
                   artifacts (sha256 of each file above), torch_version, created, reproduce;
                   prior.temperature: the temperature the service samples at by default (1 when absent);
                   reader (when reader.pt is there): its file, config and how it was trained

Loading verifies every checksum (model/manifest.py, torch-free) and refuses, naming the file, when anything is missing
or differs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    READER_FILE,
    ModelDirError,
    verify_model_dir,
)
from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """TorchScript works in torch 2.13 but warns on every call that it is deprecated; the product keeps it
    on purpose (behind export's equality check), so those warnings are not for users' eyes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


@dataclass(frozen=True)
class LoadedModel:
    encoder: torch.jit.ScriptModule
    decoder: torch.jit.ScriptModule
    prior: Prior
    manifest: dict[str, Any]
    path: Path
    reader: torch.jit.ScriptModule | None = None  # None in model directories written before readers existed

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent_dim"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["labels"])

    @property
    def temperature(self) -> float:
        """The temperature samples are drawn at unless a request says otherwise (checked at load)."""
        return float(self.manifest["prior"].get("temperature", 1.0))


def load_model_dir(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    manifest = verify_model_dir(model_dir)
    model_dir = Path(model_dir)
    modules = []
    for name in (ENCODER_FILE, DECODER_FILE):
        try:
            with quiet_torchscript():
                modules.append(torch.jit.load(str(model_dir / name), map_location=device).eval())
        except Exception as e:  # torch raises RuntimeError, ValueError, ... for a bad archive
            raise ModelDirError(f"{model_dir / name}: not a loadable TorchScript module: {e}") from e
    reader = _load_reader(model_dir, manifest, device)
    prior = _load_prior(model_dir, manifest).to(device)
    if prior.latent_dim != manifest["latent_dim"] or prior.num_classes != len(manifest["labels"]):
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: prior shape disagrees with latent_dim/labels")
    return LoadedModel(
        encoder=modules[0], decoder=modules[1], prior=prior, manifest=manifest, path=model_dir, reader=reader
    )


def _load_reader(
    model_dir: Path, manifest: dict[str, Any], device: str | torch.device
) -> torch.jit.ScriptModule | None:
    spec = manifest.get("reader")
    if spec is None:
        return None
    name = spec.get("file") if isinstance(spec, dict) else None
    if name != READER_FILE or name not in manifest["artifacts"]:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: 'reader' must name {READER_FILE!r}, listed in 'artifacts'")
    try:
        with quiet_torchscript():
            reader = torch.jit.load(str(model_dir / name), map_location=device).eval()
        weight = float(reader.generative_weight)
    except Exception as e:  # RuntimeError, ValueError, ... for a bad archive; AttributeError for another module
        raise ModelDirError(f"{model_dir / name}: not a loadable reader module: {e}") from e
    if not weight >= 0:
        raise ModelDirError(f"{model_dir / name}: generative_weight must be >= 0, got {weight}")
    return reader


def _load_prior(model_dir: Path, manifest: dict[str, Any]) -> Prior:
    spec = manifest["prior"]
    try:
        if spec["kind"] == AggregatePosteriorPrior.kind:
            path = model_dir / spec["file"]
            if spec["file"] not in manifest["artifacts"]:
                raise ModelDirError(f"{model_dir / MANIFEST_FILE}: prior file {spec['file']!r} has no checksum listed")
            try:
                tensors = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # unpickling errors of many kinds
                raise ModelDirError(f"{path}: not a loadable prior: {e}") from e
            return AggregatePosteriorPrior(tensors["means"], tensors["log_vars"])
        return GaussianPrior.from_dict(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: bad 'prior': {e!r}") from e
