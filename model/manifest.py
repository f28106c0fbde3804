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
from typing import Any, Literal, cast

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.pt"
DECODER_FILE = "decoder.pt"
PRIOR_FILE = "prior.pt"
READER_FILE = "reader.pt"
TONE_FILE = "tone.pt"
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
# What an upload is made into before the encoder sees it (model/preprocessing.py): "mnist" crops to the ink and centres
# its mass in a 28x28 field (handwritten digits); "frame" fits the whole picture into the frame (items that fill it,
# as Fashion-MNIST's do). A manifest without the field was written for digits: "mnist".
Preprocessing = Literal["mnist", "frame"]
PREPROCESSINGS: tuple[Preprocessing, ...] = ("mnist", "frame")
MNIST_SHAPE = [1, 28, 28]  # the only image shape "mnist" preprocessing makes


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
    check_classes(manifest, Path(model_dir) / MANIFEST_FILE)
    return manifest


def check_classes(manifest: dict[str, Any], path: Path) -> None:
    """ModelDirError unless `labels` names each class once (non-empty strings, unique whatever their case),
    `image_shape` is [1, H, W] and `preprocessing` (absent: "mnist") is one this code knows and can make that shape."""
    labels = manifest["labels"]
    if not (isinstance(labels, list) and labels and all(isinstance(n, str) and n.strip() for n in labels)):
        raise ModelDirError(f"{path}: labels must be a non-empty list of class names (strings), got {labels!r}")
    folded = [n.casefold() for n in labels]
    twice = sorted({n for n in labels if folded.count(n.casefold()) > 1})
    if twice:
        raise ModelDirError(f"{path}: labels must name each class once (case aside); {twice} repeat")
    shape = manifest["image_shape"]
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and shape[0] == 1
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise ModelDirError(f"{path}: image_shape must be [1, height, width], got {shape!r}")
    preprocessing = manifest.get("preprocessing", "mnist")
    if preprocessing not in PREPROCESSINGS:
        raise ModelDirError(
            f"{path}: preprocessing {preprocessing!r} is not one this code knows: {', '.join(PREPROCESSINGS)}"
        )
    if preprocessing == "mnist" and shape != MNIST_SHAPE:
        raise ModelDirError(
            f'{path}: preprocessing "mnist" makes {MNIST_SHAPE} images, but image_shape is {shape}; use "frame"'
        )


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
    def labels(self) -> list[str]:
        """The class names, by class number (checked by verify_model_dir)."""
        return [str(name) for name in self.manifest["labels"]]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["labels"])

    @property
    def is_digits(self) -> bool:
        """Whether each class is named by its number, as a digit model's "0".."9" are: its answers also say `digit`
        (every model directory written before classes had other names is one)."""
        return self.labels == [str(i) for i in range(self.num_classes)]

    @property
    def classes(self) -> list[dict[str, Any]]:
        """Each class's number (`label`) and name, in order: what GET /model lists."""
        return [{"label": i, "name": name} for i, name in enumerate(self.labels)]

    def class_of(self, value: int | str) -> int | None:
        """The class number a request names: a number is the class itself; a string is a class's name (any case)
        or, failing that, a number written out (a form field's value). None when the model has no such class."""
        if isinstance(value, str):
            folded = value.casefold()
            for i, name in enumerate(self.labels):
                if name.casefold() == folded:
                    return i
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                return None
            value = int(value)
        return value if 0 <= value < self.num_classes else None

    def describe_classes(self) -> str:
        """The valid classes, in words, for an error message: `0-9` for digits, else each number and its name."""
        if self.is_digits:
            return f"0-{self.num_classes - 1}"
        return ", ".join(f"{i} {name!r}" for i, name in enumerate(self.labels))

    @property
    def preprocessing(self) -> Preprocessing:
        """What an upload is made into before it is encoded (checked by verify_model_dir)."""
        return cast(Preprocessing, self.manifest.get("preprocessing", "mnist"))

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
