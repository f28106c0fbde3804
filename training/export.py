"""Export: eager model -> TorchScript encoder and decoder + manifest.json, written atomically.

TorchScript is deprecated upstream in favour of torch.export; this module is the one place that uses it,
and it refuses to write anything unless the scripted modules, saved and loaded back, reproduce the eager
model on random inputs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.artifacts import quiet_torchscript
from model.manifest import DECODER_FILE, ENCODER_FILE, FORMAT_VERSION, MANIFEST_FILE, PRIOR_FILE, sha256_file
from model.network import CVAE
from model.prior import AggregatePosteriorPrior, Prior

TOLERANCE = 1e-5  # largest |scripted - eager| accepted, on outputs of order 1


class ExportError(RuntimeError):
    pass


def _check_equal(name: str, scripted: Any, eager: Any) -> None:
    pairs = list(zip(scripted, eager, strict=True)) if isinstance(eager, tuple) else [(scripted, eager)]
    for s, e in pairs:
        if s.shape != e.shape or s.dtype != e.dtype:
            raise ExportError(f"{name}: scripted output {tuple(s.shape)}/{s.dtype} != eager {tuple(e.shape)}/{e.dtype}")
        diff = (s - e).abs().max().item()
        if not diff <= TOLERANCE:
            raise ExportError(f"{name}: scripted output differs from eager by {diff:.3g} (> {TOLERANCE})")


@torch.no_grad()
def check_scripted(model: CVAE, encoder: Any, decoder: Any, n: int = 64, seed: int = 0) -> None:
    """Raise ExportError unless the scripted modules give the eager model's outputs on random inputs."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    z = torch.randn(n, cfg.latent_dim, generator=g)
    y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    x = torch.rand(n, 1, cfg.image_size, cfg.image_size, generator=g)
    _check_equal("decoder", decoder(z, y), model.decoder(z, y))
    _check_equal("decoder.logits", decoder.logits(z, y), model.decoder.logits(z, y))
    _check_equal("encoder", encoder(x, y), model.encoder(x, y))
    _check_equal("encoder.all_labels", encoder.all_labels(x[:8]), model.encoder.all_labels(x[:8]))


@torch.no_grad()
def check_reader_scripted(reader: Any, scripted: Any, n: int = 64, seed: int = 0) -> None:
    """Raise ExportError unless the scripted reader gives the eager one's log-probabilities on random inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    _check_equal("reader", scripted(x), reader.eval()(x))
    if float(scripted.generative_weight) != float(reader.generative_weight):
        raise ExportError("reader: scripted generative_weight differs from eager")


def export_model_dir(
    model: CVAE,
    prior: Prior,
    out_dir: str | Path,
    *,
    data: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, Any],
    reproduce: str,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Write out_dir/{decoder.pt, encoder.pt, manifest.json}; replaces out_dir only once all is written.
    temperature: the one the service samples at by default (manifest prior.temperature).

    -> the manifest.
    """
    out_dir = Path(out_dir)
    model = model.to("cpu").eval()
    with quiet_torchscript():
        encoder = torch.jit.script(model.encoder)
        decoder = torch.jit.script(model.decoder)
    check_scripted(model, encoder, decoder)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with quiet_torchscript():
            torch.jit.save(encoder, str(tmp / ENCODER_FILE))
            torch.jit.save(decoder, str(tmp / DECODER_FILE))
            check_scripted(model, torch.jit.load(str(tmp / ENCODER_FILE)), torch.jit.load(str(tmp / DECODER_FILE)))
        prior_spec = _save_prior(prior, tmp, temperature)
        files = [DECODER_FILE, ENCODER_FILE, *([PRIOR_FILE] if isinstance(prior, AggregatePosteriorPrior) else [])]
        artifacts = {name: sha256_file(tmp / name) for name in files}
        manifest = {
            "format_version": FORMAT_VERSION,
            "id": f"cvae-{artifacts[DECODER_FILE][:12]}",
            "latent_dim": model.cfg.latent_dim,
            "image_shape": [1, model.cfg.image_size, model.cfg.image_size],
            "labels": [str(i) for i in range(model.cfg.num_classes)],
            "pixel_model": "independent Bernoulli on grey values in [0, 1]",
            "training_prior": "standard_normal",
            "prior": prior_spec,
            "data": data,
            "config": config,
            "metrics": metrics,
            "artifacts": artifacts,
            "torch_version": torch.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "reproduce": reproduce,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _save_prior(prior: Prior, folder: Path, temperature: float) -> dict[str, Any]:
    """The manifest's `prior`; an aggregate posterior's tensors go to folder/prior.pt (the spec names the file)."""
    if isinstance(prior, AggregatePosteriorPrior):
        torch.save(prior.to_tensors(), folder / PRIOR_FILE)
        spec: dict[str, Any] = {"kind": prior.kind, "file": PRIOR_FILE, "components_per_class": prior.components}
    else:
        spec = prior.to("cpu").to_dict()
    spec["temperature"] = temperature
    return spec


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Make the finished `tmp` out_dir: its files synced first, the old out_dir (if any) renamed away, then removed."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.chmod(tmp, 0o755)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)
