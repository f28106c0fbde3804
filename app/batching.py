"""Micro-batching: concurrent requests share forward passes.

Requests wait in a queue; one worker task takes as many as fit in `max_batch` samples (a request is never
split; one larger than max_batch runs alone), waits at most `max_wait_s` after the first one's arrival for
more, and runs the batch function in an executor (or awaits it, when it is a coroutine function handing the work
to another process), so the event loop stays free. Under load, requests that
arrive while a batch runs form the next one without waiting at all. No HTTP here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from app.errors import ServiceError

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


class BatchObserver(Protocol):
    def on_batch(self, requests: int, samples: int, queue_waits: Sequence[float], seconds: float) -> None: ...


@dataclass(slots=True)
class _Item:
    job: Any
    size: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(Generic[J, R]):
    """`await submit(job, size)` -> run([..., job, ...])[its index], run in batches: in `executor`, or, without
    one, awaited (then `run` is a coroutine function)."""

    def __init__(
        self,
        run: Callable[[list[J]], list[R]] | Callable[[list[J]], Awaitable[list[R]]],
        executor: Executor | None,
        *,
        max_batch: int,
        max_wait_s: float,
        max_pending: int,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def stop(self) -> None:
        """Refuse new jobs, finish the queued ones, then end the worker."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, job: J, size: int) -> R:
        if self._closed:
            raise ServiceError(503, "the service is shutting down", kind="shutting-down", headers={"Retry-After": "1"})
        if len(self._queue) >= self.max_pending:
            raise ServiceError(
                503,
                f"{len(self._queue)} requests are already waiting; try again shortly",
                kind="overloaded",
                title="Overloaded",
                headers={"Retry-After": "1"},
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(job, size, future))
        self._wakeup.set()
        return await future

    def _take(self, batch: list[_Item], total: int) -> int:
        """Move queued items into batch while they fit; -> the new total. Skips abandoned requests."""
        queue = self._queue
        while queue:
            item = queue[0]
            if item.future.done():  # the caller went away (cancelled)
                queue.popleft()
                continue
            if batch and total + item.size > self.max_batch:
                break
            queue.popleft()
            batch.append(item)
            total += item.size
        return total

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Item] = []
            total = self._take(batch, 0)
            if not batch:
                continue
            if self.max_wait_s > 0:
                deadline = batch[0].enqueued + self.max_wait_s
                while total < self.max_batch and not self._queue and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                    total = self._take(batch, total)
                    if self._queue:  # the next one did not fit
                        break
            await self._run_batch(loop, batch, total)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], total: int) -> None:
        started = time.perf_counter()
        try:
            jobs = [item.job for item in batch]
            if self._executor is not None:
                results = await loop.run_in_executor(self._executor, self._run, jobs)  # type: ignore[arg-type]
            else:
                results = await self._run(jobs)  # type: ignore[misc]
        except Exception as e:  # the whole batch failed: every caller gets the error
            if isinstance(e, ServiceError):
                log.warning("batch of %d requests failed: %s", len(batch), e)
            else:
                log.exception("batch of %d requests failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        seconds = time.perf_counter() - started
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        if self._observer is not None:
            self._observer.on_batch(len(batch), total, [started - item.enqueued for item in batch], seconds)
