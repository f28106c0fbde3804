"""The Engine protocol: one batch of one operation's payloads at a time (app/operations/), answered in order.
Torch-free: the server side of the engine; the inference side (app/inference/) implements the work."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from app.core.errors import ServiceError
from app.core.stages import BatchTrace, Stage
from model.manifest import ModelFormat

__all__ = ["BatchTrace", "Engine", "InferenceOptions", "Prepared", "Stage", "freeze_heap"]


@dataclass(frozen=True)
class InferenceOptions:
    """How the model runs (from the settings); crosses to the inference process as JSON."""

    decode_chunk: int  # decoder passes are whole numbers of this many rows, zero-padded
    max_pass_rows: int  # the largest decoder pass prepare() may allow
    max_encode_batch: int  # the most inferred-digit uploads scored in one pass, if prepare() allows it
    png_compress_level: int  # zlib level of the PNGs
    max_image_pixels: int  # largest upload in pixels, checked from its header before decoding
    model_format: ModelFormat = "torchscript"  # what the networks are loaded from


class Prepared(NamedTuple):
    """What prepare() allowed on this machine."""

    pass_rows: int  # rows per decoder pass at most
    score_uploads: int  # inferred-digit uploads per scoring pass at most


class Engine(Protocol):
    """prepare() once (load, warm up, check reproducibility), then batches: run() answers one operation's payloads
    (by the operation's name, app/operations/registry.py) in order, a traced batch's stages added to its trace;
    close() at shutdown."""

    @property
    def available(self) -> bool:
        """False while the engine cannot take batches (an inference process being replaced)."""
        ...

    async def prepare(self) -> Prepared: ...

    async def run(
        self, operation: str, payloads: list[Any], trace: BatchTrace | None = None
    ) -> list[Any | ServiceError]: ...

    async def close(self) -> None: ...


def freeze_heap() -> None:
    """Move every object alive after start-up out of the garbage collector's reach, so that full collections, which
    would scan them all, do not stall requests. Process-wide; gc.unfreeze() undoes it (tests start many apps)."""
    gc.collect()
    gc.freeze()
