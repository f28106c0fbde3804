"""Request and response bodies. Validation that needs no model lives here; what depends on the model served (its
labels, its latent size) is checked against the model card (app/engine/card.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from model.manifest import MAX_TEMPERATURE

MAX_DIGITS = 32  # most digits (grid rows) in one /generate request; repeats allowed
MAX_N = 256  # most samples per digit
MAX_TILES = 1024  # most tiles in one grid: len(digits) * n
MAX_COLUMNS = MAX_TILES
MAX_PADDING = 16
MAX_SCALE = 8
MAX_LATENT_ABS = 1000.0  # |z_i| above this is nowhere near anything the model was trained on
MAX_SEED = 2**63 - 1

# The largest /generate body a model needs: its fields, and n latent vectors of latent_dim numbers each written with
# room to spare (JSON writes a float in at most ~25 characters; indentation adds some). A larger body is refused
# (413) before it is parsed: parsing megabytes of JSON would hold the event loop for tens of milliseconds or more.
GENERATE_BODY_BASE_BYTES = 16 * 1024
BYTES_PER_LATENT_NUMBER = 48


def max_generate_body_bytes(latent_dim: int) -> int:
    return GENERATE_BODY_BASE_BYTES + MAX_N * latent_dim * BYTES_PER_LATENT_NUMBER


Digit = Annotated[int, Field(ge=0, le=9)]
LatentValue = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_LATENT_ABS, le=MAX_LATENT_ABS)]


def _digit_kind(v: Any) -> str:
    return "list" if isinstance(v, list) else "int"


def _latent_kind(v: Any) -> str:
    return "vectors" if isinstance(v, list) and v and isinstance(v[0], list) else "vector"


# Lists stop at their first bad element (fail_fast), and say so once: a body of a hundred thousand NaNs costs one
# error, not a hundred thousand (each of which pydantic, FastAPI and the error handler would otherwise build).
Digits = Annotated[
    Annotated[Digit, Tag("int")]
    | Annotated[list[Digit], Tag("list"), Field(min_length=1, max_length=MAX_DIGITS, fail_fast=True)],
    Discriminator(_digit_kind),
]
LatentVector = Annotated[list[LatentValue], Field(min_length=1, fail_fast=True)]
Latent = Annotated[
    Annotated[LatentVector, Tag("vector")]
    | Annotated[list[LatentVector], Tag("vectors"), Field(min_length=1, max_length=MAX_N, fail_fast=True)],
    Discriminator(_latent_kind),
]

GENERATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "eight_threes": {"summary": "8 samples of one digit", "value": {"digit": 3, "n": 8, "seed": 42}},
    "handwriting_grid": {
        "summary": "one row per digit, one handwriting per column",
        "value": {"digit": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "n": 6, "seed": 7, "temperature": 0.8, "scale": 2},
    },
    "hundred_tiles": {
        "summary": "a 280x280 PNG of 100 tiles, row-major",
        "value": {"digit": 5, "n": 100, "columns": 10, "padding": 0, "scale": 1, "seed": 1},
    },
}


class GenerateRequest(BaseModel):
    """What to draw and how to lay it out."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [e["value"] for e in GENERATE_EXAMPLES.values()]},
    )

    digit: Digits = Field(
        description=f"a digit 0-9, or a list of 1-{MAX_DIGITS} digits (repeats allowed): one grid row per digit, "
        "the same latent points down each column, so a column shows one handwriting across digits"
    )
    n: int = Field(8, ge=1, le=MAX_N, description=f"samples per digit; len(digits) * n <= {MAX_TILES}")
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
        description="scales each sample's distance from its digit's mean style: 0 gives that mean, lower is tidier "
        "and less varied; default: the model's own (`prior.temperature` in GET /model; 0.8 for the shipped model)",
    )
    columns: int | None = Field(None, ge=1, le=MAX_COLUMNS, description="tiles per grid row; default n")
    padding: int = Field(2, ge=0, le=MAX_PADDING, description="black pixels between and around tiles")
    scale: int = Field(1, ge=1, le=MAX_SCALE, description="integer upscaling of the whole grid")

    @model_validator(mode="after")
    def _consistent(self) -> GenerateRequest:
        if isinstance(self.latent, list) and self.latent and isinstance(self.latent[0], list):
            if "n" not in self.model_fields_set:
                self.n = len(self.latent)
            elif self.n != len(self.latent):
                raise ValueError(f"latent has {len(self.latent)} vectors but n is {self.n}; give n vectors")
        if self.latent is not None and ({"seed", "temperature"} & self.model_fields_set):
            raise ValueError("seed and temperature apply to sampled latents only; omit them when giving latent")
        if len(self.digits) * self.n > MAX_TILES:
            raise ValueError(
                f"{len(self.digits)} digits x n={self.n} is {len(self.digits) * self.n} tiles; the limit is {MAX_TILES}"
            )
        return self

    @property
    def digits(self) -> list[int]:
        return self.digit if isinstance(self.digit, list) else [self.digit]


class GenerateJSON(BaseModel):
    """/generate's answer to `Accept: application/json`: the PNG plus everything needed to reproduce it."""

    model_id: str
    seed: int | None = Field(description="the seed used; null when the request gave latent")
    width: int
    height: int
    columns: int
    digits: list[int] = Field(description="the digits, one grid row each (with columns = n)")
    labels: list[int] = Field(description="the label of each tile, digit-major then sample, as laid out row-major")
    latents: list[list[float]] = Field(description="the latent z of each tile, in the order of labels")
    png_base64: str


class EncodeResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "cvae-ae80abbd7489",
                    "digit": 7,
                    "inferred": True,
                    "probabilities": [0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 0.01],
                    "mean": [0.12, -1.3, 0.4, 0.9],
                    "log_var": [-3.1, -2.9, -3.3, -2.7],
                }
            ]
        }
    )

    model_id: str
    digit: int = Field(description="the digit given, or the one inferred when none was given")
    inferred: bool = Field(description="true when the digit was inferred from the image")
    probabilities: list[float] | None = Field(
        description="p(digit | image) for digits 0-9 when the digit was inferred; null when it was given"
    )
    mean: list[float] = Field(description="posterior mean of z for the digit reported; use it as /generate's latent")
    log_var: list[float] = Field(description="posterior log-variance of z for the digit reported")


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (media type application/problem+json)."""

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no route for GET /nope"])


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A request whose fields are wrong: `errors` says which and why (the first 10; `error_count` then says how many
    were found)."""

    errors: list[FieldError]
    error_count: int | None = Field(None, description="how many errors were found, when there were more than listed")


class Liveness(BaseModel):
    status: str = Field(examples=["alive"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model_id: str
