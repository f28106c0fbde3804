"""The async side of inference: one single-thread executor that all model work runs in (so the event loop
never blocks and torch's thread count is what the settings say), the /generate batcher, and warm-up.

Decoding uploads (Pillow, up to CVAE_MAX_IMAGE_PIXELS) runs in a second single thread, so that a large
upload never holds up the batches of /generate."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from app.batching import Batcher
from app.metrics import Metrics
from app.service import DigitService, EncodeResult, GenerateResult, GenerateSpec
from app.settings import Settings

log = logging.getLogger(__name__)

WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after its first runs; the last two must agree


class Runtime:
    def __init__(self, service: DigitService, settings: Settings, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-inference")
        self.upload_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-uploads")
        self.batcher: Batcher[GenerateSpec, GenerateResult] = Batcher(
            service.generate_batch,
            self.executor,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_pending=settings.max_pending,
            observer=metrics,
        )

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.executor.shutdown(wait=True)
        self.upload_executor.shutdown(wait=True)

    async def generate(self, spec: GenerateSpec) -> GenerateResult:
        result = await self.batcher.submit(spec, spec.size)
        self.metrics.count_images(spec.digits, spec.n)
        return result

    async def encode(self, data: bytes, digit: int | None) -> EncodeResult:
        loop = asyncio.get_running_loop()
        x = await loop.run_in_executor(self.upload_executor, self.service.preprocess, data)
        started = time.perf_counter()
        result = await loop.run_in_executor(self.executor, self.service.encode, x, digit)
        self.metrics.observe_encode(time.perf_counter() - started)
        return result

    async def warm_up(self) -> None:
        """Run every code path once (several times for the decoder, at the shape it always runs at) and check
        that generation is reproducible. Raises RuntimeError if it is not."""
        spec = self.service.make_spec(list(range(10)), 2, None, 0, 1.0, None, 2, 1)
        pngs = [(await self.batcher.submit(spec, spec.size)).png for _ in range(WARM_UP_RUNS)]
        if pngs[-1] != pngs[-2]:
            raise RuntimeError("warm-up: the same seed gave two different images; generation is not reproducible")
        await asyncio.get_running_loop().run_in_executor(self.executor, self.service.warm_up_encoder)
