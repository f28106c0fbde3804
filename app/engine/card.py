"""The model card: what the server knows of the model it serves, read from the model directory's manifest.json
(model/manifest.py, torch-free), and the checks a request gets against it before it is queued.

read_card() refuses a model directory with model/manifest.py's checks (ModelDirError, naming the file), so that
`python -m app` stops before binding its port; the engine loads the weights themselves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.interface import GenerateSpec
from app.http.problems import ServiceError, field_error
from model.manifest import verify_model_dir

MAX_OUTPUT_PIXELS = 4096 * 4096  # largest PNG /generate writes (width * height)
RANDOM_SEED_BITS = 53  # seeds drawn for requests without one stay exact in JSON / JavaScript numbers


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
    return ModelCard(manifest=verify_model_dir(model_dir), path=Path(model_dir))
