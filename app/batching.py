"""Micro-batching: concurrent requests share one call of an async batch function (an Engine's draw or encode).

Jobs wait in a queue, each with a cost (the tiles it draws, the uploads it encodes). One worker task takes as many
as fit in `max_cost` (a job is never split; one costlier than max_cost runs alone), waits at most `max_wait_s`
after the first one's arrival for more, and awaits the batch function; one batch runs at a time. Under load, the
jobs that arrive while a batch runs form the next one without waiting at all. A job whose caller has gone
(cancelled) is dropped before it runs. No HTTP here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.errors import ServiceError

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

# Called once per batch with (jobs, total cost, each job's wait in the queue, seconds the batch took).
BatchObserver = Callable[[int, int, Sequence[float], float], None]


@dataclass(slots=True)
class _Item(Generic[J, R]):
    job: J
    cost: int
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(Generic[J, R]):
    """`await submit(job, cost)` -> run([..., job, ...])[its index], with run called on batches of jobs."""

    def __init__(
        self,
        run: Callable[[list[J]], Awaitable[list[R]]],
        *,
        max_cost: int,
        max_wait_s: float,
        max_pending: int,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.max_cost = max_cost
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self._on_batch = on_batch
        self._queue: deque[_Item[J, R]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def stop(self) -> None:
        """Refuse new jobs, finish the queued ones, then end the worker."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, job: J, cost: int) -> R:
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
        self._queue.append(_Item(job, cost, future))
        self._wakeup.set()
        return await future

    def _take(self, batch: list[_Item[J, R]], total: int) -> int:
        """Move queued items into batch while they fit; -> the new total cost. Drops abandoned jobs."""
        queue = self._queue
        while queue:
            item = queue[0]
            if item.future.done():  # the caller went away (cancelled)
                queue.popleft()
                continue
            if batch and total + item.cost > self.max_cost:
                break
            queue.popleft()
            batch.append(item)
            total += item.cost
        return total

    async def _worker(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Item[J, R]] = []
            total = self._take(batch, 0)
            if not batch:
                continue
            if self.max_wait_s > 0:
                deadline = batch[0].enqueued + self.max_wait_s
                while total < self.max_cost and not self._queue and not self._closed:
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
            await self._run_batch(batch, total)

    async def _run_batch(self, batch: list[_Item[J, R]], total: int) -> None:
        started = time.perf_counter()
        try:
            results = await self._run([item.job for item in batch])
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
        if self._on_batch is not None:
            self._on_batch(len(batch), total, [started - item.enqueued for item in batch], seconds)
