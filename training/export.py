"""Export: eager model -> TorchScript encoder and decoder, the same networks as torch.export programs, and
manifest.json, written atomically.

TorchScript is deprecated upstream in favour of torch.export; this module is the one place that writes either,
and it refuses to write anything unless the modules and programs, saved and loaded back, reproduce the eager model
on random inputs. `python -m training.export MODEL_DIR` adds the programs to a model directory written before them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.artifacts import GENERATIVE_WEIGHT, load_model_dir, quiet_torchscript
from model.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PRIOR_FILE,
    PROGRAM_FILES,
    READER_FILE,
    TONE_FILE,
    ModelDirError,
    sha256_file,
    verify_model_dir,
)
from model.network import CVAE, CVAEConfig, Reader, ReaderConfig
from model.prior import AggregatePosteriorPrior, Prior

TOLERANCE = 1e-5  # largest |scripted - eager| (or |program - eager|) accepted, on outputs of order 1
EXAMPLE_ROWS = 8  # the batch the programs are traced at; their batch size is dynamic

log = logging.getLogger(__name__)


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
    programs: bool = True,
    labels: Sequence[str] | None = None,
    preprocessing: str = "mnist",
) -> dict[str, Any]:
    """Write out_dir/{decoder.pt, encoder.pt, their torch.export programs, manifest.json}; replaces out_dir only
    once all is written.
    temperature: the one the service samples at by default (manifest prior.temperature). programs: False writes
    the TorchScript files alone, as model directories were written before the programs. labels: the classes'
    names (default "0", "1", ...); preprocessing: how an upload becomes one of the model's images (model/imaging.py).

    -> the manifest.
    """
    # long: the manifest is written out literally, field by field, in the one place that writes it
    out_dir = Path(out_dir)
    if labels is not None and len(labels) != model.cfg.num_classes:
        raise ValueError(f"{len(labels)} class names for a model of {model.cfg.num_classes} classes")
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
        networks: dict[str, nn.Module] = {ENCODER_FILE: model.encoder, DECODER_FILE: model.decoder}
        written = export_programs(networks, tmp, model.cfg) if programs else []
        prior_spec = _save_prior(prior, tmp, temperature)
        files = [DECODER_FILE, ENCODER_FILE, *([PRIOR_FILE] if isinstance(prior, AggregatePosteriorPrior) else [])]
        files += written
        artifacts = {name: sha256_file(tmp / name) for name in files}
        manifest = {
            "format_version": FORMAT_VERSION,
            "id": model_id(artifacts),
            "latent_dim": model.cfg.latent_dim,
            "image_shape": [1, model.cfg.image_size, model.cfg.image_size],
            "labels": list(labels) if labels is not None else [str(i) for i in range(model.cfg.num_classes)],
            "preprocessing": preprocessing,
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
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


class _Method(nn.Module):
    """One method of a network as a module's forward: what torch.export exports."""

    def __init__(self, network: nn.Module, method: str) -> None:
        super().__init__()
        self.network = network
        self.method = method

    def forward(self, *inputs: torch.Tensor) -> Any:
        return getattr(self.network, self.method)(*inputs)


def _example_inputs(cfg: CVAEConfig, name: str, method: str, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs of EXAMPLE_ROWS rows for one method of the network whose TorchScript file is `name`."""
    n = EXAMPLE_ROWS
    y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    if name == DECODER_FILE:
        return torch.randn(n, cfg.latent_dim, generator=g), y
    x = torch.rand(n, 1, cfg.image_size, cfg.image_size, generator=g)
    return (x, y) if name == ENCODER_FILE and method == "forward" else (x,)


@torch.no_grad()
def export_programs(networks: dict[str, nn.Module], folder: Path, cfg: CVAEConfig, seed: int = 0) -> list[str]:
    """Write each method of each eager network (by its TorchScript file's name; cfg: the CVAE's) as a torch.export
    program into folder (model.manifest.PROGRAM_FILES), its batch size dynamic, each loaded back and checked against
    the eager method on random inputs (ExportError) -> the files written."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.export.Dim("batch", min=1)
    written = []
    for name, network in networks.items():
        network = network.to("cpu").eval()
        weight = network.generative_weight if name == READER_FILE else None
        extra: dict[str, str] = {GENERATIVE_WEIGHT: repr(float(weight))} if isinstance(weight, float | int) else {}
        for method, file in PROGRAM_FILES[name].items():
            inputs = _example_inputs(cfg, name, method, g)
            module = network if method == "forward" else _Method(network, method)
            dynamic = tuple({0: batch} for _ in inputs)
            program = torch.export.export(module, inputs, dynamic_shapes=dynamic if method == "forward" else (dynamic,))
            torch.export.save(program, str(folder / file), extra_files=extra)
            loaded = torch.export.load(str(folder / file)).module()
            check = _example_inputs(cfg, name, method, g)
            _check_equal(file, loaded(*check), getattr(network, method)(*check))
            written.append(file)
    return written


def add_programs(model_dir: str | Path) -> dict[str, Any]:
    """Add the torch.export programs to a model directory that has only TorchScript files: its networks are rebuilt
    from the manifest's configs and the TorchScript modules' weights (checked to give the scripted outputs), exported,
    and listed in the manifest; the directory is replaced only once all is written. Its model id stays: the programs
    answer as the TorchScript modules do. -> the manifest."""
    model_dir = Path(model_dir)
    manifest = verify_model_dir(model_dir)
    scripted = load_model_dir(model_dir)
    try:
        model = CVAE(CVAEConfig.from_dict(manifest["config"]["model"])).eval()
        reader = None if scripted.reader is None else Reader(ReaderConfig(**manifest["reader"]["config"])).eval()
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: no usable network config to rebuild from: {e!r}") from e
    assert isinstance(scripted.encoder, torch.jit.ScriptModule) and isinstance(scripted.decoder, torch.jit.ScriptModule)
    model.encoder.load_state_dict(scripted.encoder.state_dict())
    model.decoder.load_state_dict(scripted.decoder.state_dict())
    check_scripted(model, scripted.encoder, scripted.decoder)
    networks: dict[str, nn.Module] = {ENCODER_FILE: model.encoder, DECODER_FILE: model.decoder}
    if reader is not None:
        assert isinstance(scripted.reader, torch.jit.ScriptModule)
        reader.load_state_dict(scripted.reader.state_dict())
        check_reader_scripted(reader, scripted.reader)
        networks[READER_FILE] = reader

    def add(folder: Path) -> None:
        for file in export_programs(networks, folder, model.cfg):
            manifest["artifacts"][file] = sha256_file(folder / file)

    rewrite_model_dir(model_dir, manifest, add)
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


def rewrite_model_dir(model_dir: Path, manifest: dict[str, Any], add: Callable[[Path], None]) -> None:
    """A copy of model_dir's files, add(copy) writing new ones into it (and listing them in `manifest`), then the
    manifest written: it becomes model_dir only once all of that is done."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.partial-", dir=model_dir.parent))
    try:
        for f in model_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        add(tmp)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        replace_dir(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_id(artifacts: dict[str, str]) -> str:
    """cvae- and 12 hex digits: the decoder's sha256 alone (what every model without a reader or tone curves has),
    or a digest of it and the reader's and tone curves' that the model has (a new reader answers /encode
    differently, new curves draw differently: a new id)."""
    parts = [artifacts[name] for name in (DECODER_FILE, READER_FILE, TONE_FILE) if name in artifacts]
    if len(parts) == 1:
        return f"cvae-{parts[0][:12]}"
    return f"cvae-{hashlib.sha256(':'.join(parts).encode()).hexdigest()[:12]}"


def replace_dir(tmp: Path, out_dir: Path) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Add the torch.export programs (.pt2) to a model directory written before them.",
    )
    parser.add_argument("model_dir", type=Path, help="model directory (its TorchScript files and manifest.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        manifest = add_programs(args.model_dir)
    except (ModelDirError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    programs = sorted(f for f in manifest["artifacts"] if f.endswith(".pt2"))
    log.info("%s (model id %s): added %s", args.model_dir, manifest["id"], ", ".join(programs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
