"""The one boundary between the HTTP side and model work: an Engine.

    prepare()        load-time work, once: pass-size checks, warm-up, the reproducibility check, heap freeze
    draw(specs)      a /generate batch -> the PNG of each request
    encode(uploads)  an /encode batch -> each upload's result, or the error that upload alone gets

Two implementations: ProcessEngine (app/worker.py, the default) runs the model in a child process with its own
interpreter and core, so that the event loop only parses requests and relays bytes; ThreadEngine (here) runs it in
one thread of the server's process. Both run DigitService (app/service.py); batching happens before them
(app/runtime.py).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from app.errors import ServiceError
from app.service import DigitService, EncodeResult, GenerateSpec, Prepared, ServiceOptions, Upload
from app.settings import Settings

T = TypeVar("T")


class Engine(Protocol):
    @property
    def available(self) -> bool:
        """False while the engine cannot take batches (an inference process being replaced)."""
        ...

    async def prepare(self) -> Prepared: ...

    async def draw(self, specs: list[GenerateSpec]) -> list[bytes]: ...

    async def encode(self, uploads: list[Upload]) -> list[EncodeResult | ServiceError]: ...

    async def close(self) -> None: ...


def service_options(settings: Settings) -> ServiceOptions:
    return ServiceOptions(
        decode_chunk=settings.decode_chunk,
        max_pass_rows=settings.max_pass_rows,
        max_encode_batch=settings.max_encode_batch,
        png_compress_level=settings.png_compress_level,
        max_image_pixels=settings.max_image_pixels,
    )


def prepare_here(service: DigitService) -> Prepared:
    """Everything done once before serving, in the process that runs the model: the service's own preparation
    (pass sizes, warm-up, the reproducibility check), then the heap freeze."""
    prepared = service.prepare()
    freeze_heap()
    return prepared


def freeze_heap() -> None:
    """Move every object alive after start-up (torch, the model, the framework: hundreds of thousands) out of the
    garbage collector's reach, so that full collections, which would scan them all, do not stall requests (figures in
    the README's Performance section). Process-wide; close() undoes it (tests start many apps in one process)."""
    gc.collect()
    gc.freeze()


class ThreadEngine:
    """The engine in the server's process: every call runs in one single-thread executor, off the event loop."""

    def __init__(self, service: DigitService) -> None:
        self.service = service
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-inference")

    @property
    def available(self) -> bool:
        return True

    async def prepare(self) -> Prepared:
        return await self._run(prepare_here, self.service)

    async def draw(self, specs: list[GenerateSpec]) -> list[bytes]:
        return await self._run(self.service.draw_batch, specs)

    async def encode(self, uploads: list[Upload]) -> list[EncodeResult | ServiceError]:
        return await self._run(self.service.encode_batch, uploads)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        gc.unfreeze()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
