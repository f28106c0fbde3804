"""ThreadEngine: the engine in the server's own process, every call in one thread off the event loop. It imports torch
and loads the model when prepared (the server imports neither until then); CVAE_INFERENCE_PROCESS=false selects it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from app.core.errors import ServiceError
from app.core.stages import BatchTrace
from app.engine.interface import InferenceOptions, Prepared

if TYPE_CHECKING:
    from app.inference.worker import Inference

T = TypeVar("T")


class ThreadEngine:
    """The Engine in this process: one single-thread executor runs the model's load, preparation and batches."""

    def __init__(self, model_dir: Path, options: InferenceOptions, torch_threads: int) -> None:
        self.model_dir = model_dir
        self.options = options
        self.torch_threads = torch_threads
        self.inference: Inference | None = None
        self._threads_before: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-inference")

    @property
    def available(self) -> bool:
        return True

    async def prepare(self) -> Prepared:
        return await self._run(self._load_and_prepare)

    async def run(
        self, operation: str, payloads: list[Any], trace: BatchTrace | None = None
    ) -> list[Any | ServiceError]:
        assert self.inference is not None, "prepare first"
        return await self._run(self.inference.run, operation, payloads, trace.stages if trace is not None else None)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._threads_before is not None:  # process-wide: put back (tests run many apps in one process)
            import torch

            torch.set_num_threads(self._threads_before)
        gc.unfreeze()

    def _load_and_prepare(self) -> Prepared:
        import torch

        from app.inference.worker import load_inference, prepare_here

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        self.inference = load_inference(self.model_dir, self.options)
        return prepare_here(self.inference)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
