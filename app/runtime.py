"""What the routes call: the model's service (request checks, latents) and the engine behind one batcher per
endpoint. Async; no HTTP."""

from __future__ import annotations

import asyncio
from functools import partial

from app.batching import Batcher
from app.engine import Engine
from app.errors import ServiceError
from app.metrics import Metrics
from app.service import DigitService, EncodeResult, GenerateSpec, Upload
from app.settings import Settings


class Runtime:
    def __init__(self, service: DigitService, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        """service: this process's copy of the model, for checks and latents (model work runs in `engine`)."""
        self.service = service
        self.engine = engine
        self.metrics = metrics
        self._draws: Batcher[GenerateSpec, bytes] = Batcher(
            engine.draw,
            max_cost=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_pending=settings.max_pending,
            on_batch=partial(metrics.on_batch, "generate"),
        )
        self._encodes: Batcher[Upload, EncodeResult | ServiceError] = Batcher(
            engine.encode,
            max_cost=settings.max_encode_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_pending=settings.max_pending,
            on_batch=partial(metrics.on_batch, "encode"),
        )

    @property
    def available(self) -> bool:
        return self.engine.available

    async def start(self) -> None:
        """Prepare the engine (RuntimeError if it cannot), then take requests."""
        await self.engine.prepare()
        self._draws.start()
        self._encodes.start()

    async def stop(self) -> None:
        """Finish the queued requests, then close the engine."""
        await asyncio.gather(self._draws.stop(), self._encodes.stop())
        await self.engine.close()

    async def generate(self, spec: GenerateSpec) -> bytes:
        """-> the request's PNG (its latents, when wanted: service.latents(spec))."""
        png = await self._draws.submit(spec, spec.tiles)
        self.metrics.count_images(spec.digits, spec.n)
        return png

    async def encode(self, upload: Upload) -> EncodeResult:
        """-> the upload's result; its ServiceError (4xx for a bad upload) is raised."""
        if upload.digit is not None:
            self.service.check_digits([upload.digit], ["body", "digit"])
        outcome = await self._encodes.submit(upload, 1)
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome
