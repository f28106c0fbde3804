"""POST /generate: images of the model's classes, sampled by seed or decoded from the latents given, as a PNG grid
(or JSON with the PNG inside)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from app.core.errors import ServiceError
from app.core.stages import Stage
from app.operations import grid
from app.operations.base import (
    MAX_NAME_CHARS,
    Answer,
    Operation,
    Serving,
    Worker,
    check_latent,
    class_numbers,
    label_field,
    label_of,
)
from app.operations.grid import MAX_COLUMNS, MAX_PADDING, MAX_SCALE, MAX_TILES, Drawing
from model.manifest import MAX_TEMPERATURE, ModelCard

MAX_LABELS = 32  # most labels (grid rows) in one request; repeats allowed
MAX_N = 256  # most samples per label
MAX_LATENT_ABS = 1000.0  # |z_i| above this is nowhere near anything the model was trained on
MAX_SEED = 2**63 - 1
RANDOM_SEED_BITS = 53  # seeds drawn for requests without one stay exact in JSON / JavaScript numbers
WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after its first runs; the last two must agree

# The largest body a model needs: its fields, and n latent vectors of latent_dim numbers each written with room to
# spare (JSON writes a float in at most ~25 characters; indentation adds some). A larger body is refused (413) before
# it is parsed: parsing megabytes of JSON would hold the event loop for tens of milliseconds or more.
GENERATE_BODY_BASE_BYTES = 16 * 1024
BYTES_PER_LATENT_NUMBER = 48


def max_generate_body_bytes(latent_dim: int) -> int:
    return GENERATE_BODY_BASE_BYTES + MAX_N * latent_dim * BYTES_PER_LATENT_NUMBER


# A class number, or a class name (any case): checked against the model's card.
Label = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
LatentValue = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_LATENT_ABS, le=MAX_LATENT_ABS)]


def _label_kind(v: Any) -> str:
    return "list" if isinstance(v, list) else "one"


def _latent_kind(v: Any) -> str:
    return "vectors" if isinstance(v, list) and v and isinstance(v[0], list) else "vector"


# Lists stop at their first bad element (fail_fast), and say so once: a body of a hundred thousand NaNs costs one
# error, not a hundred thousand (each of which pydantic, FastAPI and the error handler would otherwise build).
Labels = Annotated[
    Annotated[Label, Tag("one")]
    | Annotated[list[Label], Tag("list"), Field(min_length=1, max_length=MAX_LABELS, fail_fast=True)],
    Discriminator(_label_kind),
]
LatentVector = Annotated[list[LatentValue], Field(min_length=1, fail_fast=True)]
Latent = Annotated[
    Annotated[LatentVector, Tag("vector")]
    | Annotated[list[LatentVector], Tag("vectors"), Field(min_length=1, max_length=MAX_N, fail_fast=True)],
    Discriminator(_latent_kind),
]

GENERATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "eight_threes": {"summary": "8 samples of one class", "value": {"label": 3, "n": 8, "seed": 42}},
    "handwriting_grid": {
        "summary": "one row per class, one style per column",
        "value": {"label": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "n": 6, "seed": 7, "temperature": 0.8, "scale": 2},
    },
    "hundred_tiles": {
        "summary": "a 280x280 PNG of 100 tiles, row-major",
        "value": {"label": 5, "n": 100, "columns": 10, "padding": 0, "scale": 1, "seed": 1},
    },
}


class GenerateRequest(BaseModel):
    """What to draw and how to lay it out."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [e["value"] for e in GENERATE_EXAMPLES.values()]},
    )

    label: Labels | None = Field(
        None,
        description=f"required (or its alias `digit`): a class (its number, or its name in any case: GET /model lists "
        f"`classes`), or a list of 1-{MAX_LABELS} classes (repeats allowed): one grid row per class, the same latent "
        "points down each column, so a column shows one style across classes",
    )
    digit: Labels | None = Field(None, description="an alias of `label`, as requests said it before (give one)")
    n: int = Field(8, ge=1, le=MAX_N, description=f"samples per label; len(labels) * n <= {MAX_TILES}")
    latent: Latent | None = Field(
        None,
        description="a raw latent z, used as-is: one vector of the model's latent_dim numbers (`latent_dim` in GET "
        "/model) used for every sample, or a list of n such vectors (n defaults to its length), e.g. `mean` from "
        "/encode. seed and temperature do not apply to it.",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="same seed + same model = byte-identical PNG; random when absent"
    )
    temperature: float | None = Field(
        None,
        ge=0,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="scales each sample's distance from its class's mean style: 0 gives that mean, lower is tidier "
        "and less varied; default: the model's own (`prior.temperature` in GET /model; 0.8 for the shipped model)",
    )
    columns: int | None = Field(None, ge=1, le=MAX_COLUMNS, description="tiles per grid row; default n")
    padding: int = Field(2, ge=0, le=MAX_PADDING, description="black pixels between and around tiles")
    scale: int = Field(1, ge=1, le=MAX_SCALE, description="integer upscaling of the whole grid")

    @model_validator(mode="after")
    def _consistent(self) -> GenerateRequest:
        label_of(self.label, self.digit)
        if isinstance(self.latent, list) and self.latent and isinstance(self.latent[0], list):
            if "n" not in self.model_fields_set:
                self.n = len(self.latent)
            elif self.n != len(self.latent):
                raise ValueError(f"latent has {len(self.latent)} vectors but n is {self.n}; give n vectors")
        if self.latent is not None and ({"seed", "temperature"} & self.model_fields_set):
            raise ValueError("seed and temperature apply to sampled latents only; omit them when giving latent")
        if len(self.labels) * self.n > MAX_TILES:
            raise ValueError(
                f"{len(self.labels)} labels x n={self.n} is {len(self.labels) * self.n} tiles; the limit is {MAX_TILES}"
            )
        return self

    @property
    def labels(self) -> list[int | str]:
        """The labels given, under `label` or `digit`."""
        given = label_of(self.label, self.digit)
        return given if isinstance(given, list) else [given]


class GenerateSpec(NamedTuple):
    """One request, checked against the model card. Tiles are label-major, then sample."""

    labels: tuple[int, ...]  # class numbers, one grid row each
    n: int
    latent: tuple[tuple[float, ...], ...] | None  # 1 or n rows of D numbers, used as-is; None: sample from the prior
    seed: int | None  # None exactly when latent is given
    temperature: float
    columns: int
    padding: int
    scale: int
    width: int
    height: int
    with_latents: bool  # the answer shows each tile's latent and label (a JSON answer)
    raw: bool = False  # the answer is the tiles' pixels, not a PNG (the Open Inference Protocol's app/oip)

    @property
    def tiles(self) -> int:
        return len(self.labels) * self.n

    @property
    def grid(self) -> grid.Grid:
        return grid.Grid(self.columns, self.padding, self.scale, self.width, self.height)


def make_spec(card: ModelCard, body: GenerateRequest, *, with_latents: bool, raw: bool = False) -> GenerateSpec:
    """Check what depends on the model (labels, latent size, output size) and fix the seed and the temperature
    (None: the model's). 422 for what the model cannot draw."""
    labels = class_numbers(card, body.labels, ["body", label_field(body.label)])
    rows, seed = None, body.seed
    if body.latent is not None:
        nested = isinstance(body.latent[0], list)
        rows = cast(list[list[float]], body.latent if nested else [body.latent])
        for i, row in enumerate(rows):
            check_latent(card, row, ["body", "latent", *([i] if nested else [])])
        seed = None
    elif seed is None:
        seed = secrets.randbits(RANDOM_SEED_BITS)
    g = grid.layout(
        card, tiles=len(labels) * body.n, columns=body.columns, default_columns=body.n, padding=body.padding,
        scale=body.scale,
    )  # fmt: skip
    return GenerateSpec(
        labels=tuple(labels),
        n=body.n,
        latent=None if rows is None else tuple(tuple(row) for row in rows),
        seed=seed,
        temperature=card.temperature if body.temperature is None else body.temperature,
        columns=g.columns,
        padding=g.padding,
        scale=g.scale,
        width=g.width,
        height=g.height,
        with_latents=with_latents,
        raw=raw,
    )


class Generate(Operation[GenerateRequest, GenerateSpec, Drawing]):
    name = "generate"
    Request = GenerateRequest
    Payload = GenerateSpec
    Result = Drawing
    negotiates = True
    draws = True
    response_model = grid.DrawingJSON
    seconds_per_unit = grid.SECONDS_PER_TILE
    summary = "Draw images of the model's classes"
    description = (
        "Samples `n` latents (for one label, from that label's prior; for several, from the prior every label "
        "shares, each latent decoded under every label) or decodes the latent given, and lays the images out in a "
        "grid, label-major then sample, row-major in `columns` columns: with the default columns = n, one row per "
        "label and one latent point, one style, down each column. A label is a class number or name (GET /model's "
        "`classes`); `digit` is an alias of `label`. The same seed, request and model always give a "
        "byte-identical PNG; the seed used comes back in `X-Seed`."
    )
    examples = GENERATE_EXAMPLES

    def body_limit(self, card: ModelCard) -> int:
        return max_generate_body_bytes(card.latent_dim)

    def prepare(self, serving: Serving, body: GenerateRequest, as_json: bool) -> GenerateSpec:
        return make_spec(serving.card, body, with_latents=as_json)

    def cost(self, payload: GenerateSpec) -> int:
        return payload.tiles

    def work(self, payload: GenerateSpec) -> float:
        return grid.work(payload.tiles, payload.grid)

    def images(self, payload: GenerateSpec) -> Sequence[int]:
        return [label for label in payload.labels for _ in range(payload.n)]

    def answer(self, card: ModelCard, payload: GenerateSpec, result: Drawing, as_json: bool) -> Answer:
        return grid.answer(card, result, payload.grid, rows=list(payload.labels), seed=payload.seed, as_json=as_json)

    def run(
        self, worker: Worker, payloads: list[GenerateSpec], stages: list[Stage] | None
    ) -> list[Drawing | ServiceError]:
        jobs = latents_many(worker, payloads)
        drawings = grid.draw(
            worker, jobs, [s.grid for s in payloads], [s.with_latents for s in payloads], stages,
            raw=[s.raw for s in payloads],
        )  # fmt: skip
        return list(drawings)

    def warm_up(self, worker: Worker) -> None:
        """Every label, two samples each, drawn WARM_UP_RUNS times: the last two must be the same PNG."""
        labels: list[int | str] = [*range(min(MAX_LABELS, worker.card.num_classes))]
        body = GenerateRequest(label=labels, n=2, seed=0, temperature=1.0)
        spec = make_spec(worker.card, body, with_latents=True)
        pngs = [self.run(worker, [spec], None)[0] for _ in range(WARM_UP_RUNS)]
        if pngs[-1] != pngs[-2]:
            raise RuntimeError("warm-up: the same seed gave two different images; generation is not reproducible")


def latents_many(worker: Worker, specs: list[GenerateSpec]) -> list[tuple[Any, Any]]:
    """Each spec's (z (N, D), labels (N,)), label-major; the sampled ones drawn together (sample_latents_many), the
    given ones used as-is: what a spec gives alone, bit for bit."""
    import torch

    from model.prior import sample_latents_many

    sampled = [(s.labels, s.n, s.seed, s.temperature) for s in specs if s.seed is not None]
    drawn = iter(sample_latents_many(worker.model.prior, sampled) if sampled else [])
    jobs: list[tuple[Any, Any]] = []
    for s in specs:
        if s.latent is None:
            jobs.append(tuple(next(drawn)))  # type: ignore[arg-type]
            continue
        z = torch.tensor(s.latent, dtype=torch.float32)  # (1 or n, D)
        if z.shape[0] == 1 and s.n > 1:
            z = z.expand(s.n, -1)
        labels = torch.tensor(s.labels, dtype=torch.long).repeat_interleave(s.n)  # (N,)
        jobs.append((z.repeat(len(s.labels), 1), labels))
    return jobs


OPERATION = Generate()
