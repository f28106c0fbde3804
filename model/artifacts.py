"""The model directory: the contract between export (training/export.py) and everything that serves it.

    decoder.pt     TorchScript  forward(z: float32[N, D], y: int64[N]) -> float32[N, 1, 28, 28] in [0, 1]
                                logits(z, y) -> the same before the sigmoid
    encoder.pt     TorchScript  forward(x: float32[N, 1, 28, 28] in [0, 1], y: int64[N])
                                -> (mean: float32[N, D], log_var: float32[N, D])
    reader.pt      (optional, model dirs from 2026-12 on) TorchScript  forward(x: float32[N, 1, 28, 28] in [0, 1])
                   -> log p(y | x) float32[N, C] from the discriminative reader; attribute generative_weight
    *.pt2          (model dirs from 2026-12 on) the same networks as torch.export programs (torch.export.save), one
                   per method: encoder.pt2, encoder.all_labels.pt2, decoder.pt2, decoder.logits.pt2 and, with a
                   reader, reader.pt2 (its generative_weight in the archive's extra file "generative_weight")
    prior.pt       (when the prior is "aggregate_posterior") {"kind", "means": float32[10, M, D],
                   "log_vars": float32[10, M, D]}, plain tensors (torch.load(weights_only=True))
    tone.pt        (optional: models trained with --tone-curves) {"drawn", "real": float32[C, K]}, each class's
                   tone curve (model/tone.py), applied to what the decoder draws
    manifest.json  format_version, id, latent_dim, image_shape, labels, preprocessing (absent: "mnist"), prior, data,
                   config, metrics, artifacts (sha256 of each file above), torch_version, created, reproduce;
                   prior.temperature: the temperature the service samples at by default (1 when absent);
                   reader (when reader.pt is there): its file, config and how it was trained; tone (when tone.pt
                   is there): its file and how it was fitted

Loading verifies every checksum (model/manifest.py, torch-free) and refuses, naming the file, when anything is missing
or differs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    PROGRAM_FILES,
    READER_FILE,
    TONE_FILE,
    ModelCard,
    ModelDirError,
    ModelFormat,
    verify_model_dir,
)
from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior
from model.tone import Draw, ToneCurves, ToneError, toned


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """TorchScript works in torch 2.13 but warns on every call that it is deprecated; the product keeps it
    on purpose (behind export's equality check), so those warnings are not for users' eyes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


GENERATIVE_WEIGHT = "generative_weight"  # the reader's attribute, and the extra file of reader.pt2 holding it


class ExportedNetwork:
    """A network loaded from its torch.export programs, called as its TorchScript module is: `net(...)` runs forward,
    `net.logits(...)` / `net.all_labels(...)` the other methods, `net.generative_weight` a reader's attribute."""

    def __init__(self, methods: dict[str, Callable[..., Any]], attributes: dict[str, float]) -> None:
        self._methods = methods
        self._attributes = attributes

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        return self._methods["forward"](*inputs, **named)

    def __getattr__(self, name: str) -> Any:
        members = {**self.__dict__.get("_methods", {}), **self.__dict__.get("_attributes", {})}
        if name not in members:
            raise AttributeError(name)
        return members[name]


Network = torch.jit.ScriptModule | ExportedNetwork


@dataclass(frozen=True)
class LoadedModel:
    encoder: Network
    decoder: Network
    prior: Prior
    manifest: dict[str, Any]
    path: Path
    reader: Network | None = None  # None in model directories written before readers existed
    format: ModelFormat = "torchscript"  # what the networks were loaded from
    tone: ToneCurves | None = None  # None: the model draws the decoder's grey levels as they are

    @property
    def draw(self) -> Draw:
        """What the service draws for (z, labels): the decoder's grey levels through the tone curves, when the model
        has them (the decoder alone gives the likelihoods)."""
        return toned(self.decoder, self.tone)

    @property
    def card(self) -> ModelCard:
        """The manifest's one view (model/manifest.py), the one the server reads too."""
        return ModelCard(manifest=self.manifest, path=self.path)

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def latent_dim(self) -> int:
        return self.card.latent_dim

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def temperature(self) -> float:
        """The temperature samples are drawn at unless a request says otherwise (checked at load)."""
        return self.card.temperature


def has_programs(manifest: dict[str, Any]) -> bool:
    """Whether the model directory lists a torch.export program for every method of every network it has."""
    networks = [ENCODER_FILE, DECODER_FILE, *([READER_FILE] if manifest.get("reader") is not None else [])]
    return all(f in manifest["artifacts"] for name in networks for f in PROGRAM_FILES[name].values())


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu", model_format: ModelFormat = "torchscript"
) -> LoadedModel:
    """The model directory, checked and loaded. model_format "export" loads the torch.export programs when the
    directory has them (has_programs), else the TorchScript modules, as "torchscript" always does: LoadedModel.format
    says which."""
    manifest = verify_model_dir(model_dir)
    model_dir = Path(model_dir)
    loaded_format: ModelFormat = "export" if model_format == "export" and has_programs(manifest) else "torchscript"
    load = _load_programs if loaded_format == "export" else _load_torchscript
    encoder, decoder = (load(model_dir, name, device) for name in (ENCODER_FILE, DECODER_FILE))
    reader = _load_reader(model_dir, manifest, device, load)
    prior = _load_prior(model_dir, manifest).to(device)
    tone = _load_tone(model_dir, manifest)
    if prior.latent_dim != manifest["latent_dim"] or prior.num_classes != len(manifest["labels"]):
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: prior shape disagrees with latent_dim/labels")
    return LoadedModel(
        encoder=encoder,
        decoder=decoder,
        prior=prior,
        manifest=manifest,
        path=model_dir,
        reader=reader,
        format=loaded_format,
        tone=None if tone is None else tone.to(device),
    )


def _load_torchscript(model_dir: Path, name: str, device: str | torch.device) -> Network:
    try:
        with quiet_torchscript():
            module: torch.jit.ScriptModule = torch.jit.load(str(model_dir / name), map_location=device).eval()
    except Exception as e:  # torch raises RuntimeError, ValueError, ... for a bad archive
        raise ModelDirError(f"{model_dir / name}: not a loadable TorchScript module: {e}") from e
    return module


def _load_programs(model_dir: Path, name: str, device: str | torch.device) -> Network:
    """The torch.export programs of the network whose TorchScript file is `name`, one per method."""
    methods: dict[str, Callable[..., Any]] = {}
    attributes: dict[str, float] = {}
    for method, file in PROGRAM_FILES[name].items():
        extra = {GENERATIVE_WEIGHT: ""}  # filled in only from a reader's archive
        try:
            program = torch.export.load(str(model_dir / file), extra_files=extra)
            methods[method] = program.module().to(device)
        except Exception as e:  # torch raises RuntimeError, ValueError, zipfile errors, ... for a bad archive
            raise ModelDirError(f"{model_dir / file}: not a loadable torch.export program: {e}") from e
        if name == READER_FILE:
            try:
                attributes[GENERATIVE_WEIGHT] = float(extra[GENERATIVE_WEIGHT])
            except ValueError as e:
                raise ModelDirError(f"{model_dir / file}: no {GENERATIVE_WEIGHT} in the archive") from e
    return ExportedNetwork(methods, attributes)


def _load_reader(
    model_dir: Path,
    manifest: dict[str, Any],
    device: str | torch.device,
    load: Callable[[Path, str, str | torch.device], Network],
) -> Network | None:
    name = _optional_file(model_dir, manifest, "reader", READER_FILE)
    if name is None:
        return None
    try:
        reader = load(model_dir, name, device)
        weight = float(reader.generative_weight)
    except ModelDirError:
        raise
    except Exception as e:  # AttributeError for another module
        raise ModelDirError(f"{model_dir / name}: not a loadable reader module: {e}") from e
    if not weight >= 0:
        raise ModelDirError(f"{model_dir / name}: generative_weight must be >= 0, got {weight}")
    return reader


def _optional_file(model_dir: Path, manifest: dict[str, Any], key: str, file: str) -> str | None:
    """The file of an optional part of the model (the manifest's `key`, naming `file`): None when the manifest has no
    such part; refused unless it names `file` and lists it among the checksummed artifacts."""
    spec = manifest.get(key)
    if spec is None:
        return None
    name = spec.get("file") if isinstance(spec, dict) else None
    if name != file or name not in manifest["artifacts"]:
        raise ModelDirError(f"{model_dir / MANIFEST_FILE}: {key!r} must name {file!r}, listed in 'artifacts'")
    return name


def _load_tone(model_dir: Path, manifest: dict[str, Any]) -> ToneCurves | None:
    name = _optional_file(model_dir, manifest, "tone", TONE_FILE)
    if name is None:
        return None
    try:
        return ToneCurves.load(model_dir / name, len(manifest["labels"]))
    except ToneError as e:
        raise ModelDirError(f"{model_dir / name}: {e}") from None


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
