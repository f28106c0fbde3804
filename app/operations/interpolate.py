"""POST /interpolate: a walk through latent space from one latent to another under one label, drawn as a PNG strip
(or JSON with the PNG inside). The first tile is /generate's drawing of `from`, the last its drawing of `to`; the steps
between follow a spherical path in the label's whitened coordinates, so every step stays as typical of the prior as
its ends are (why: docs/architecture.md, "Interpolation")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.errors import ServiceError
from app.core.stages import Stage
from app.operations import grid
from app.operations.base import (
    Answer,
    Operation,
    Serving,
    Worker,
    check_latent,
    class_numbers,
    label_field,
    label_of,
)
from app.operations.generate import (
    BYTES_PER_LATENT_NUMBER,
    GENERATE_BODY_BASE_BYTES,
    Label,
    LatentVector,
)
from app.operations.grid import MAX_COLUMNS, MAX_PADDING, MAX_SCALE, MAX_TILES, Drawing
from model.manifest import ModelCard

PARALLEL = 1e-6  # below this sin(angle) the two directions are taken as one: the walk is then linear


class InterpolateRequest(BaseModel):
    """Where to start and end, under which label, in how many steps, and how to lay the strip out."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        populate_by_name=False,
        json_schema_extra={"examples": [{"label": 5, "from": [0.0] * 4, "to": [1.0] * 4, "steps": 8}]},
    )

    label: Label | None = Field(
        None,
        description="required (or its alias `digit`): the class every step is drawn under, its number or its name in "
        "any case (GET /model lists `classes`)",
    )
    digit: Label | None = Field(None, description="an alias of `label`, as requests said it before (give one)")
    start: LatentVector = Field(
        alias="from", description="the first latent: the model's latent_dim numbers (`latent_dim` in GET /model)"
    )
    end: LatentVector = Field(alias="to", description="the last latent, as many numbers as `from`")
    steps: int = Field(8, ge=2, le=MAX_TILES, description=f"tiles in the walk, both ends included: 2-{MAX_TILES}")
    columns: int | None = Field(None, ge=1, le=MAX_COLUMNS, description="tiles per grid row; default steps")
    padding: int = Field(2, ge=0, le=MAX_PADDING, description="black pixels between and around tiles")
    scale: int = Field(1, ge=1, le=MAX_SCALE, description="integer upscaling of the whole grid")

    @model_validator(mode="after")
    def _one_label(self) -> InterpolateRequest:
        label_of(self.label, self.digit)
        return self


class InterpolateSpec(NamedTuple):
    """One request, checked against the model card."""

    label: int  # the class number
    start: tuple[float, ...]
    end: tuple[float, ...]
    steps: int
    columns: int
    padding: int
    scale: int
    width: int
    height: int
    with_latents: bool

    @property
    def grid(self) -> grid.Grid:
        return grid.Grid(self.columns, self.padding, self.scale, self.width, self.height)


class Interpolate(Operation[InterpolateRequest, InterpolateSpec, Drawing]):
    name = "interpolate"
    Request = InterpolateRequest
    Payload = InterpolateSpec
    Result = Drawing
    negotiates = True
    draws = True
    response_model = grid.DrawingJSON
    seconds_per_unit = grid.SECONDS_PER_TILE
    summary = "Walk from one latent to another"
    description = (
        "Draws `steps` tiles under one `label` (a class number or name; `digit` is its alias), walking from the "
        "latent `from` to the latent `to` (e.g. two `mean`s from /encode, or two `latents` of a /generate JSON "
        "answer): the first tile is exactly /generate's drawing of `from`, the last of `to`. The steps between "
        "follow a spherical path in the label's whitened prior coordinates (its norm interpolated), so each stays as "
        "typical of the prior as its ends are; a straight line would pass through the improbable middle of a "
        "Gaussian. Laid out as /generate lays out its grid."
    )

    def body_limit(self, card: ModelCard) -> int:
        return GENERATE_BODY_BASE_BYTES + 2 * card.latent_dim * BYTES_PER_LATENT_NUMBER

    def prepare(self, serving: Serving, body: InterpolateRequest, as_json: bool) -> InterpolateSpec:
        card = serving.card
        (label,) = class_numbers(card, [label_of(body.label, body.digit)], ["body", label_field(body.label)])
        check_latent(card, body.start, ["body", "from"])
        check_latent(card, body.end, ["body", "to"])
        g = grid.layout(card, tiles=body.steps, columns=body.columns, default_columns=body.steps,
                        padding=body.padding, scale=body.scale)  # fmt: skip
        return InterpolateSpec(label, tuple(body.start), tuple(body.end), body.steps, *g, with_latents=as_json)

    def cost(self, payload: InterpolateSpec) -> int:
        return payload.steps

    def work(self, payload: InterpolateSpec) -> float:
        return grid.work(payload.steps, payload.grid)

    def images(self, payload: InterpolateSpec) -> Sequence[int]:
        return [payload.label] * payload.steps

    def answer(self, card: ModelCard, payload: InterpolateSpec, result: Drawing, as_json: bool) -> Answer:
        return grid.answer(card, result, payload.grid, rows=[payload.label], seed=None, as_json=as_json)

    def run(
        self, worker: Worker, payloads: list[InterpolateSpec], stages: list[Stage] | None
    ) -> list[Drawing | ServiceError]:
        import torch

        jobs = [
            (walk(worker.model.prior, s.label, s.start, s.end, s.steps), torch.full((s.steps,), s.label))
            for s in payloads
        ]
        return list(grid.draw(worker, jobs, [s.grid for s in payloads], [s.with_latents for s in payloads], stages))


def walk(prior: Any, label: int, start: Sequence[float], end: Sequence[float], steps: int) -> Any:
    """(steps, D) float32 latents from start to end (both exactly, as /generate reads them): in the label's whitened
    coordinates u = L^-1 (z - mean) of its Gaussian (the aggregate-posterior prior's moment-matched one), the
    direction moves along the great circle and the norm linearly between the ends'."""
    import torch

    gaussian = getattr(prior, "gaussian", prior)  # AggregatePosteriorPrior keeps its class Gaussians there
    mean = gaussian.mean[label].double()  # (D,)
    tril = gaussian.scale_tril[label].double()  # (D, D)
    a = torch.tensor(start, dtype=torch.float32)
    b = torch.tensor(end, dtype=torch.float32)
    ends = torch.stack([a, b]).double() - mean  # (2, D)
    u = torch.linalg.solve_triangular(tril, ends.T, upper=False).T  # (2, D) whitened
    t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None]  # (S, 1)
    norms = u.norm(dim=1)
    if bool((norms > 0).all()):
        da, db = u[0] / norms[0], u[1] / norms[1]
        angle = torch.arccos(torch.clamp(da @ db, -1.0, 1.0))
        if float(torch.sin(angle)) > PARALLEL:
            direction = (torch.sin((1 - t) * angle) * da + torch.sin(t * angle) * db) / torch.sin(angle)
            path = direction * ((1 - t) * norms[0] + t * norms[1])  # (S, D)
        else:  # the same or opposite directions: no great circle is singled out
            path = (1 - t) * u[0] + t * u[1]
    else:  # an end at the label's mean: no direction to keep
        path = (1 - t) * u[0] + t * u[1]
    z = (mean + path @ tril.T).float()  # (S, D)
    z[0], z[-1] = a, b
    return z


OPERATION = Interpolate()
