"""The model card: what the server knows of the model it serves, read from the model directory's manifest.json
(torch-free), and the checks a request gets against it before it is queued.

read_card() refuses a model directory as model/artifacts.py's loader does (the same messages, naming the file), so
that `python -m app` stops before binding its port; the engine loads the weights themselves.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.interface import GenerateSpec
from app.http.problems import ServiceError, field_error

MAX_OUTPUT_PIXELS = 4096 * 4096  # largest PNG /generate writes (width * height)
RANDOM_SEED_BITS = 53  # seeds drawn for requests without one stay exact in JSON / JavaScript numbers
MAX_TEMPERATURE = 5.0  # model.prior.MAX_TEMPERATURE (tests check they agree)
# model/artifacts.py's names and the keys it requires.
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REQUIRED_ARTIFACTS = ("decoder.pt", "encoder.pt")
REQUIRED_KEYS = ("format_version", "id", "latent_dim", "image_shape", "labels", "prior", "artifacts")


class ModelDirError(RuntimeError):
    """The model directory cannot be used; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class ModelCard:
    manifest: dict[str, Any]
    path: Path

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
    def tile_shape(self) -> tuple[int, int]:
        """(height, width) of one drawn digit."""
        h, w = (int(s) for s in self.manifest["image_shape"][-2:])
        return h, w

    @property
    def temperature(self) -> float:
        """The temperature samples are drawn at unless a request says otherwise."""
        return float(self.manifest["prior"].get("temperature", 1.0))

    @property
    def prior_kind(self) -> str:
        return str(self.manifest["prior"].get("kind", ""))

    def make_spec(
        self,
        *,
        digits: list[int],
        n: int,
        latent: list[float] | list[list[float]] | None,
        seed: int | None,
        temperature: float | None,
        columns: int | None,
        padding: int,
        scale: int,
        with_latents: bool,
    ) -> GenerateSpec:
        """Check what depends on the model (labels, latent size, output size) and fix the seed and the temperature
        (None: the model's). 422 for what the model cannot draw."""
        self.check_digits(digits, ["body", "digit"])
        rows = None
        if latent is not None:
            rows = latent if isinstance(latent[0], list) else [latent]
            self._check_latent_rows(rows, nested=rows is latent)
            seed = None
        elif seed is None:
            seed = secrets.randbits(RANDOM_SEED_BITS)
        tiles = len(digits) * n
        columns = max(1, min(columns or n, tiles))
        grid_rows = -(-tiles // columns)
        tile_h, tile_w = self.tile_shape
        width = (columns * (tile_w + padding) + padding) * scale
        height = (grid_rows * (tile_h + padding) + padding) * scale
        if width * height > MAX_OUTPUT_PIXELS:
            raise ServiceError(
                422,
                f"the grid would be {width}x{height} = {width * height} pixels; the limit is {MAX_OUTPUT_PIXELS} "
                "(fewer tiles, less padding or a smaller scale)",
                kind="validation-error",
                title="Invalid request",
                errors=[field_error(["body"], "output image too large", "output_too_large")],
            )
        return GenerateSpec(
            digits=tuple(digits),
            n=n,
            latent=None if rows is None else tuple(tuple(row) for row in rows),
            seed=seed,
            temperature=self.temperature if temperature is None else temperature,
            columns=columns,
            padding=padding,
            scale=scale,
            width=width,
            height=height,
            with_latents=with_latents,
        )

    def _check_latent_rows(self, rows: list[list[float]], *, nested: bool) -> None:
        bad = [i for i, row in enumerate(rows) if len(row) != self.latent_dim]
        if bad:
            i, d = bad[0], self.latent_dim
            loc: list[str | int] = ["body", "latent"] + ([i] if nested else [])
            raise ServiceError(
                422,
                f"latent must have {d} numbers (the model's latent size D = {d}); got {len(rows[i])}",
                kind="validation-error",
                title="Invalid request",
                errors=[field_error(loc, f"expected {d} numbers, got {len(rows[i])}", "latent_dim")],
            )

    def check_digits(self, digits: list[int], loc: list[str | int]) -> None:
        """422 for digits the model has no label for (only a model with fewer than ten labels: schemas allow 0-9)."""
        unknown = sorted({d for d in digits if d >= self.num_classes})
        if unknown:
            raise ServiceError(
                422,
                f"this model knows digits 0-{self.num_classes - 1}, not {unknown}",
                kind="validation-error",
                title="Invalid request",
                errors=[field_error(loc, f"digits must be below {self.num_classes}", "label")],
            )


def read_card(model_dir: str | Path) -> ModelCard:
    """The card of a model directory, its manifest and every artifact's sha256 checked. ModelDirError names the file
    and what is wrong with it."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_FILE
    if not model_dir.is_dir():
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
    _check_artifacts(model_dir, manifest["artifacts"])
    temperature = manifest["prior"].get("temperature", 1.0) if isinstance(manifest["prior"], dict) else None
    if not (isinstance(temperature, int | float) and not isinstance(temperature, bool)) or not (
        0 <= temperature <= MAX_TEMPERATURE
    ):
        raise ModelDirError(
            f"{path}: prior.temperature must be a number in [0, {MAX_TEMPERATURE:g}], got {temperature!r}"
        )
    return ModelCard(manifest=manifest, path=model_dir)


def _check_artifacts(model_dir: Path, listed: dict[str, str]) -> None:
    for name in REQUIRED_ARTIFACTS:
        if name not in listed:
            raise ModelDirError(f"{model_dir / MANIFEST_FILE}: no checksum listed for {name}")
    for name, expected in listed.items():
        path = model_dir / name
        if Path(name).name != name:
            raise ModelDirError(f"{model_dir / MANIFEST_FILE}: artifact {name!r} is not a plain file name")
        if not path.is_file():
            raise ModelDirError(f"{path}: missing")
        actual = _sha256(path)
        if actual != expected:
            raise ModelDirError(f"{path}: sha256 {actual} does not match the manifest's {expected}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
