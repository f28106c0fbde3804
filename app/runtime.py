"""What the routes call: the model's service (request checks, latents, cost estimates) and the engine behind one
scheduler with a lane per operation (app/batching.py). Async; no HTTP."""

from __future__ import annotations

from functools import partial

from app.batching import Lane, Scheduler
from app.engine import Engine
from app.errors import ServiceError
from app.metrics import Metrics
from app.service import (
    ENCODE_SECONDS_PER_PIXEL,
    GENERATE_SECONDS_PER_TILE,
    DigitService,
    EncodeResult,
    GenerateSpec,
    Upload,
    encode_work,
    generate_work,
)
from app.settings import Settings


class Runtime:
    def __init__(self, service: DigitService, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        """service: this process's copy of the model, for checks, latents and estimates (model work runs in
        `engine`)."""
        self.service = service
        self.engine = engine
        self.metrics = metrics
        self.scheduler = Scheduler(
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue_s=settings.max_queue_wait_s,
            max_queued_bytes=settings.max_queued_bytes,
        )
        self._draws: Lane[GenerateSpec, bytes] = self.scheduler.lane(
            "generate",
            engine.draw,
            max_cost=settings.max_batch,
            seconds_per_unit=GENERATE_SECONDS_PER_TILE,
            on_batch=partial(metrics.on_batch, "generate"),
            on_queue=partial(metrics.on_queue, "generate"),
        )
        self._encodes: Lane[Upload, EncodeResult | ServiceError] = self.scheduler.lane(
            "encode",
            engine.encode,
            max_cost=settings.max_encode_batch,
            seconds_per_unit=ENCODE_SECONDS_PER_PIXEL,
            on_batch=partial(metrics.on_batch, "encode"),
            on_queue=partial(metrics.on_queue, "encode"),
        )

    @property
    def available(self) -> bool:
        return self.engine.available

    async def start(self) -> None:
        """Prepare the engine (RuntimeError if it cannot), then take requests."""
        await self.engine.prepare()
        self.scheduler.start()

    async def stop(self) -> None:
        """Finish the queued requests, then close the engine."""
        await self.scheduler.stop()
        await self.engine.close()

    async def generate(self, spec: GenerateSpec) -> bytes:
        """-> the request's PNG (its latents, when wanted: service.latents(spec))."""
        png = await self.scheduler.submit(self._draws, spec, spec.tiles, generate_work(spec))
        self.metrics.count_images(spec.digits, spec.n)
        return png

    async def encode(self, upload: Upload) -> EncodeResult:
        """-> the upload's result; its ServiceError (4xx for a bad upload) is raised. An upload too large, or not
        an image at all, is refused from its header here, before it is queued."""
        if upload.digit is not None:
            self.service.check_digits([upload.digit], ["body", "digit"])
        pixels = self.service.upload_pixels(upload.data)
        outcome = await self.scheduler.submit(self._encodes, upload, 1, encode_work(pixels), size=len(upload.data))
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome
