"""The async side of inference: where model work runs (so the event loop never blocks and torch's thread count
is what the settings say), the /generate batcher, and warm-up.

/generate batches (sampling, decoding, PNGs) run in the inference process (app/worker.py) when
CVAE_INFERENCE_PROCESS is true, the default: there they have an interpreter and a core of their own, and the
event loop only relays them. Otherwise, and always for /encode, model work runs in one single-thread executor
of this process. Decoding uploads (Pillow, up to CVAE_MAX_IMAGE_PIXELS) runs in a second single thread, so that
a large upload never holds up the model work."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from app.batching import Batcher
from app.metrics import Metrics
from app.service import DigitService, EncodeResult, GenerateSpec
from app.settings import Settings
from app.worker import InferenceProcess

log = logging.getLogger(__name__)

WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after its first runs; the last two must agree


class Runtime:
    def __init__(
        self, service: DigitService, settings: Settings, metrics: Metrics, process: InferenceProcess | None = None
    ) -> None:
        """process: where /generate batches run (spawned; start() waits for it), or None: the inference thread."""
        self.service = service
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-inference")
        self.upload_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-uploads")
        self.process = process
        self.max_pass_rows = settings.max_batch
        self.batcher: Batcher[GenerateSpec, bytes] = Batcher(
            self.process.draw if self.process is not None else service.draw_batch,
            None if self.process is not None else self.executor,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_pending=settings.max_pending,
            observer=metrics,
        )

    @property
    def available(self) -> bool:
        """False while the inference process is being restarted."""
        return self.process is None or self.process.available

    async def start(self) -> None:
        """Start the inference process (if any; RuntimeError if it cannot load the model) and the batcher."""
        if self.process is not None:
            await self.process.wait_ready()
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self.process is not None:
            await self.process.stop()
        self.executor.shutdown(wait=True)
        self.upload_executor.shutdown(wait=True)

    async def generate(self, spec: GenerateSpec) -> bytes:
        """-> the request's PNG (its latents, if wanted: service.latents(spec))."""
        png = await self.batcher.submit(spec, spec.size)
        self.metrics.count_images(spec.digits, spec.n)
        return png

    async def encode(self, data: bytes, digit: int | None) -> EncodeResult:
        loop = asyncio.get_running_loop()
        x = await loop.run_in_executor(self.upload_executor, self.service.preprocess, data)
        started = time.perf_counter()
        result = await loop.run_in_executor(self.executor, self.service.encode, x, digit)
        self.metrics.observe_encode(time.perf_counter() - started)
        return result

    async def warm_up(self) -> None:
        """Run every code path once (several times for the decoder, at the shape it always runs at) and check
        that generation is reproducible. Raises RuntimeError if it is not. In the inference thread, first see
        whether the decoder may run larger passes (the inference process checks its own)."""
        loop = asyncio.get_running_loop()
        if self.process is None:
            await loop.run_in_executor(self.executor, self.service.enable_large_passes, self.max_pass_rows)
        spec = self.service.make_spec(list(range(10)), 2, None, 0, 1.0, None, 2, 1)
        pngs = [await self.batcher.submit(spec, spec.size) for _ in range(WARM_UP_RUNS)]
        if pngs[-1] != pngs[-2]:
            raise RuntimeError("warm-up: the same seed gave two different images; generation is not reproducible")
        await loop.run_in_executor(self.executor, self.service.warm_up_encoder)
