"""The model directory's manifest and checksums, read without torch: what the server process checks before the
inference process loads anything (model/artifacts.py loads the files themselves; the directory's layout is described
there).

verify_model_dir() refuses a model directory with ModelDirError, whose message names the file and what is wrong;
ModelCard is the one view of a checked manifest, read by the server and by model/artifacts.py's LoadedModel alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.pt"
DECODER_FILE = "decoder.pt"
PRIOR_FILE = "prior.pt"
READER_FILE = "reader.pt"
# torch.export programs (torch.export.save), one per method, beside the TorchScript files (model directories from
# 2026-12 on; model/artifacts.py loads either): TorchScript file -> {method: program file}.
PROGRAM_FILES = {
    ENCODER_FILE: {"forward": "encoder.pt2", "all_labels": "encoder.all_labels.pt2"},
    DECODER_FILE: {"forward": "decoder.pt2", "logits": "decoder.logits.pt2"},
    READER_FILE: {"forward": "reader.pt2"},
}
ModelFormat = Literal["torchscript", "export"]  # what a model directory's networks are loaded from
REQUIRED_ARTIFACTS = (DECODER_FILE, ENCODER_FILE)
REQUIRED_KEYS = ("format_version", "id", "latent_dim", "image_shape", "labels", "prior", "artifacts")
MAX_TEMPERATURE = 5.0  # the largest sampling temperature a model or a request may ask for


Reading = Literal["reader", "generative"]  # which rule reads an image's label: the reader network, or Bayes' rule


class ModelDirError(RuntimeError):
    """The model directory cannot be used; the message names the file and what is wrong with it."""


def is_temperature(value: object) -> bool:
    """Whether value is a sampling temperature a model or a run may ask for: a number in [0, MAX_TEMPERATURE]."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_TEMPERATURE


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST_FILE
    if not Path(model_dir).is_dir():
        raise ModelDirError(f"{model_dir}: model directory does not exist")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelDirError(f"{path}: missing (not a model directory?)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: unreadable: {e}") from e
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelDirError(f"{path}: missing keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {manifest['format_version']!r}, this code reads {FORMAT_VERSION}")
    return manifest


def verify_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Check the manifest, the sha256 of every artifact it lists and the default temperature -> the manifest."""
    manifest = read_manifest(model_dir)
    listed = manifest["artifacts"]
    for name in REQUIRED_ARTIFACTS:
        if name not in listed:
            raise ModelDirError(f"{Path(model_dir) / MANIFEST_FILE}: no checksum listed for {name}")
    for name, expected in listed.items():
        path = Path(model_dir) / name
        if Path(name).name != name:
            raise ModelDirError(f"{Path(model_dir) / MANIFEST_FILE}: artifact {name!r} is not a plain file name")
        if not path.is_file():
            raise ModelDirError(f"{path}: missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelDirError(f"{path}: sha256 {actual} does not match the manifest's {expected}")
    prior = manifest["prior"]
    temperature = prior.get("temperature", 1.0) if isinstance(prior, dict) else None
    if not is_temperature(temperature):
        raise ModelDirError(
            f"{Path(model_dir) / MANIFEST_FILE}: prior.temperature must be a number in [0, {MAX_TEMPERATURE:g}], "
            f"got {temperature!r}"
        )
    return manifest


@dataclass(frozen=True)
class ModelCard:
    """A model directory's checked manifest, and the facts read from it; torch-free."""

    manifest: dict[str, Any]
    path: Path

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent_dim"])

    @property
    def labels(self) -> list[Any]:
        return list(self.manifest["labels"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["labels"])

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) of one image."""
        h, w = (int(s) for s in self.manifest["image_shape"][-2:])
        return h, w

    @property
    def temperature(self) -> float:
        """The temperature samples are drawn at unless a request says otherwise (checked by verify_model_dir)."""
        return float(self.manifest["prior"].get("temperature", 1.0))

    @property
    def prior_kind(self) -> str:
        return str(self.manifest["prior"].get("kind", ""))

    @property
    def reading(self) -> Reading:
        """Which rule reads an image's label: "reader" when the directory has a reader network, else "generative"
        (the label under which the generative model explains the image best)."""
        return "reader" if self.manifest.get("reader") is not None else "generative"


def read_card(model_dir: str | Path) -> ModelCard:
    """The card of a model directory, its manifest and every artifact's sha256 checked. ModelDirError names the file
    and what is wrong with it."""
    return ModelCard(manifest=verify_model_dir(model_dir), path=Path(model_dir))
