"""The Engine protocol and the payloads that cross it. Torch-free: the server builds and reads these; only the
engine's side turns them into tensors."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from app.http.problems import ServiceError
from model.manifest import ModelFormat


@dataclass(frozen=True)
class InferenceOptions:
    """How the model runs (from the settings); crosses to the inference process as JSON."""

    decode_chunk: int  # decoder passes are whole numbers of this many rows, zero-padded
    max_pass_rows: int  # the largest decoder pass prepare() may allow
    max_encode_batch: int  # the most inferred-digit uploads scored in one pass, if prepare() allows it
    png_compress_level: int  # zlib level of the PNGs
    max_image_pixels: int  # largest upload in pixels, checked from its header before decoding
    model_format: ModelFormat = "torchscript"  # what the networks are loaded from


class GenerateSpec(NamedTuple):
    """One /generate request, checked against the model card. Tiles are digit-major, then sample."""

    digits: tuple[int, ...]
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

    @property
    def tiles(self) -> int:
        return len(self.digits) * self.n


class Drawing(NamedTuple):
    """A /generate request's answer: its PNG, and its tiles' labels and latents when the spec asked for them."""

    png: bytes
    labels: list[int] | None  # (N,)
    latents: list[list[float]] | None  # (N, D), what the decoder drew each tile from


class Upload(NamedTuple):
    """One /encode request: the uploaded file's bytes and the digit it shows (None: infer it)."""

    data: bytes
    digit: int | None


class EncodeResult(NamedTuple):
    """The posterior of z for the given or inferred digit; probabilities only when inferred."""

    digit: int
    inferred: bool
    probabilities: list[float] | None
    mean: list[float]
    log_var: list[float]


class Stage(NamedTuple):
    """A step of a batch's work timed by the engine, for traces (app/telemetry/otel.py)."""

    name: str  # "inference", "png" (a /generate drawing's) or "image" (an upload's decoding)
    item: int | None  # the job it was for, by its index in the batch; None: the whole batch
    start_ns: int  # time.time_ns(): the wall clock, the same in the server and the inference process
    end_ns: int


@dataclass
class BatchTrace:
    """A traced batch: each job's trace context goes in (W3C traceparents, for the engine's logs), the engine's timed
    stages come out. A batch without one is timed by nobody."""

    traceparents: list[str]
    stages: list[Stage] = field(default_factory=list)


class Prepared(NamedTuple):
    """What prepare() allowed on this machine."""

    pass_rows: int  # rows per decoder pass at most
    score_uploads: int  # inferred-digit uploads per scoring pass at most


class Engine(Protocol):
    """prepare() once (load, warm up, check reproducibility), then batches: draw() for /generate, encode() for
    /encode, each answering its items in order (a traced batch's stages added to its trace); close() at shutdown."""

    @property
    def available(self) -> bool:
        """False while the engine cannot take batches (an inference process being replaced)."""
        ...

    async def prepare(self) -> Prepared: ...

    async def draw(self, specs: list[GenerateSpec], trace: BatchTrace | None = None) -> list[Drawing]: ...

    async def encode(
        self, uploads: list[Upload], trace: BatchTrace | None = None
    ) -> list[EncodeResult | ServiceError]: ...

    async def close(self) -> None: ...


def freeze_heap() -> None:
    """Move every object alive after start-up out of the garbage collector's reach, so that full collections, which
    would scan them all, do not stall requests. Process-wide; gc.unfreeze() undoes it (tests start many apps)."""
    gc.collect()
    gc.freeze()
