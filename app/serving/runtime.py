"""What the routes call: the model card (request checks) and the engine behind one scheduler with a lane per
operation. Async and torch-free; no HTTP."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from app.engine.card import ModelCard
from app.engine.images import header_pixels
from app.engine.interface import Drawing, EncodeResult, Engine, GenerateSpec, Upload
from app.http.problems import ServiceError
from app.serving.scheduler import Lane, Scheduler
from app.settings import Settings
from app.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from app.telemetry.otel import Tracing

# What a request costs the engine, estimated before it is queued (the scheduler turns it into seconds, starting from
# the guesses below and learning from the batches it runs): a /generate tile costs the decoder about as much as
# writing 12,000 grid pixels (scaling, PNG), and a request ~8 tiles besides; an upload costs the model (encoder,
# label scoring) about as much as decoding 100,000 pixels. The seconds per unit are learnt; these ratios are not.
GENERATE_SECONDS_PER_TILE = 50e-6
PIXELS_PER_TILE = 12_000
REQUEST_TILES = 8
ENCODE_SECONDS_PER_PIXEL = 40e-9
UPLOAD_PIXELS = 100_000


def generate_work(spec: GenerateSpec) -> float:
    """A /generate request's estimated work, in tiles."""
    return spec.tiles + spec.width * spec.height / PIXELS_PER_TILE + REQUEST_TILES


def encode_work(decoded_pixels: int) -> float:
    """An /encode upload's estimated work, in pixels decoded."""
    return decoded_pixels + UPLOAD_PIXELS


class Runtime:
    def __init__(
        self, card: ModelCard, engine: Engine, settings: Settings, metrics: Metrics, tracing: Tracing | None = None
    ) -> None:
        self.card = card
        self.engine = engine
        self.metrics = metrics
        self.tracing = tracing  # None: untraced, and the lanes' jobs are the payloads themselves
        self.max_image_pixels = settings.max_image_pixels
        self.scheduler = Scheduler(
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue_s=settings.max_queue_wait_s,
            max_queued_bytes=settings.max_queued_bytes,
        )
        self._draws: Lane[Any, Drawing] = self.scheduler.lane(
            engine.draw if tracing is None else tracing.batches("generate", engine.draw),
            max_cost=settings.max_batch,
            seconds_per_unit=GENERATE_SECONDS_PER_TILE,
            on_batch=partial(metrics.on_batch, "generate"),
            on_queue=partial(metrics.on_queue, "generate"),
        )
        self._encodes: Lane[Any, EncodeResult | ServiceError] = self.scheduler.lane(
            engine.encode if tracing is None else tracing.batches("encode", engine.encode),
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

    async def generate(self, spec: GenerateSpec) -> Drawing:
        """-> the request's drawing (a spec from card.make_spec)."""
        job = spec if self.tracing is None else self.tracing.job(spec)
        drawing = await self.scheduler.submit(self._draws, job, spec.tiles, generate_work(spec))
        self.metrics.count_images(spec.digits, spec.n)
        self.metrics.count_answer(self.card.id, "generate")
        return drawing

    async def encode(self, upload: Upload) -> EncodeResult:
        """-> the upload's result; its ServiceError (4xx for a bad upload) is raised. An upload too large, or not
        an image at all, is refused from its header here, before it is queued."""
        if upload.digit is not None:
            self.card.check_digits([upload.digit], ["body", "digit"])
        pixels = header_pixels(upload.data, self.max_image_pixels)
        job = upload if self.tracing is None else self.tracing.job(upload)
        outcome = await self.scheduler.submit(self._encodes, job, 1, encode_work(pixels), size=len(upload.data))
        if isinstance(outcome, ServiceError):
            raise outcome
        self.metrics.count_answer(self.card.id, "encode")
        return outcome
