"""What the drawing operations (those whose answer is a grid of tiles) share: the grid a request's tiles are laid
out in, checked against the output limit, the answer they give (a PNG, or JSON with its tiles' labels and latents),
and, on the inference side, decoding every tile of a batch in shared passes and writing each request's PNG."""

from __future__ import annotations

import base64
from array import array
from time import time_ns
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from app.core.errors import field_error, invalid
from app.core.stages import Stage
from app.operations.base import Answer, Worker
from model.manifest import ModelCard

MAX_OUTPUT_PIXELS = 4096 * 4096  # largest PNG a drawing operation writes (width * height)
MAX_TILES = 1024  # most tiles in one grid
MAX_COLUMNS = MAX_TILES
MAX_PADDING = 16
MAX_SCALE = 8
PNG = "image/png"
JSON = "application/json"
# /generate's per-tile cost: a tile costs the decoder about as much as writing 12,000 grid pixels (scaling, PNG), and
# a request ~8 tiles besides. The seconds per unit are learnt by the scheduler; these ratios are not.
SECONDS_PER_TILE = 50e-6
PIXELS_PER_TILE = 12_000
REQUEST_TILES = 8


class Grid(NamedTuple):
    columns: int
    padding: int
    scale: int
    width: int
    height: int


class Drawing(NamedTuple):
    """A drawing's answer: its PNG (or its tiles' pixels), and its tiles' labels and latents when the request asked
    for them."""

    png: bytes  # empty when the tiles were asked for instead
    labels: list[int] | None  # (N,)
    latents: bytes | None  # (N, D) float32, native byte order, row-major: what the decoder drew each tile from
    tiles: bytes | None = None  # (N, H, W) uint8, row-major: the pixels the PNG lays out, when asked for instead


def latent_rows(latents: bytes, n: int) -> list[list[float]]:
    """A drawing's latents as n rows of floats (each the float32's exact value)."""
    values = array("f", latents).tolist()
    d = len(values) // n if n else 0
    return [values[i * d : (i + 1) * d] for i in range(n)]


def layout(card: ModelCard, *, tiles: int, columns: int | None, default_columns: int, padding: int, scale: int) -> Grid:
    """The grid of `tiles` tiles: 422 when its PNG would be larger than MAX_OUTPUT_PIXELS."""
    columns = max(1, min(columns or default_columns, tiles))
    rows = -(-tiles // columns)
    tile_h, tile_w = card.tile_shape
    width = (columns * (tile_w + padding) + padding) * scale
    height = (rows * (tile_h + padding) + padding) * scale
    if width * height > MAX_OUTPUT_PIXELS:
        raise invalid(
            f"the grid would be {width}x{height} = {width * height} pixels; the limit is {MAX_OUTPUT_PIXELS} "
            "(fewer tiles, less padding or a smaller scale)",
            [field_error(["body"], "output image too large", "output_too_large")],
        )
    return Grid(columns, padding, scale, width, height)


def work(tiles: int, grid: Grid) -> float:
    """A drawing's estimated work, in tiles."""
    return tiles + grid.width * grid.height / PIXELS_PER_TILE + REQUEST_TILES


class DrawingJSON(BaseModel):
    """A drawing's answer to `Accept: application/json`: the PNG plus everything needed to reproduce it."""

    model_id: str
    seed: int | None = Field(description="the seed used; null when the request gave its latents")
    width: int
    height: int
    columns: int
    digits: list[int] = Field(description="the class numbers, one grid row each (with columns = n)")
    labels: list[int] = Field(
        description="the class number of each tile, row label-major then sample, as laid out row-major"
    )
    latents: list[list[float]] = Field(description="the latent z of each tile, in the order of labels")
    png_base64: str


def answer(
    card: ModelCard, drawing: Drawing, grid: Grid, *, rows: list[int], seed: int | None, as_json: bool
) -> Answer:
    headers = {"X-Model-Id": card.id}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if not as_json:
        return Answer(drawing.png, PNG, headers)
    assert drawing.labels is not None and drawing.latents is not None  # asked for by the payload
    body: dict[str, Any] = {
        "model_id": card.id,
        "seed": seed,
        "width": grid.width,
        "height": grid.height,
        "columns": grid.columns,
        "digits": rows,  # the name the answer had when classes were digits: answers stay as they were
        "labels": drawing.labels,
        "latents": latent_rows(drawing.latents, len(drawing.labels)),
        "png_base64": base64.b64encode(drawing.png).decode("ascii"),
    }
    return Answer(body, JSON, headers)


def draw(
    worker: Worker,
    jobs: list[tuple[Any, Any]],
    grids: list[Grid],
    with_latents: list[bool],
    stages: list[Stage] | None,
    raw: list[bool] | None = None,
) -> list[Drawing]:
    """Inference side: every request's (z (N, D), labels (N,)) decoded in shared passes -> each one's drawing (raw:
    for each request, whether it wants its tiles' pixels instead of a PNG)."""
    import torch

    from model.pictures import encode_png, tile_grid, to_uint8

    started = time_ns() if stages is not None else 0
    if len(jobs) == 1:
        z, labels = jobs[0]
    else:
        z = torch.cat([j[0] for j in jobs])
        labels = torch.cat([j[1] for j in jobs])
    tiles = to_uint8(worker.decode(z, labels)).split([j[0].shape[0] for j in jobs])  # one conversion, then views
    if stages is not None:
        stages.append(Stage("inference", None, started, time_ns()))
    drawings = []
    raw = raw or [False] * len(jobs)
    for i, (g, t, (z, labels), latents, as_tiles) in enumerate(zip(grids, tiles, jobs, with_latents, raw, strict=True)):
        # Latents travel as float32 bytes: a Python float per element cost both processes more than the rest of
        # the answer (docs/performance.md).
        labels_, latents_ = (labels.tolist(), z.float().contiguous().numpy().tobytes()) if latents else (None, None)
        if as_tiles:
            drawings.append(Drawing(b"", labels_, latents_, t.contiguous().numpy().tobytes()))
            continue
        started = time_ns() if stages is not None else 0
        png = encode_png(tile_grid(t, g.columns, g.padding, g.scale), worker.png_compress_level)
        if stages is not None:
            stages.append(Stage("png", i, started, time_ns()))
        drawings.append(Drawing(png, labels_, latents_))
    return drawings
