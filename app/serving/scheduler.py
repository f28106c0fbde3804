"""Scheduling the engine's work, async and torch-free: concurrent requests share batches, one batch runs at a time,
shortest job first, and the queue is bounded by the seconds of work it holds (503 with Retry-After beyond them) and
by the bytes its uploads hold. How it estimates, orders, admits and expires jobs: docs/architecture.md, "Serving"."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.core.errors import ServiceError, unavailable

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

# Called once per batch with (jobs, total cost, each job's wait in the queue, seconds the batch took).
BatchObserver = Callable[[int, int, Sequence[float], float], None]
# Called with a refusal's or a drop's reason: "overloaded", "queue_bytes", "deadline" or "abandoned".
QueueObserver = Callable[[str], None]

RATE_SMOOTHING = 0.2  # weight of the latest batch in a lane's seconds-per-unit average
RATE_RANGE = 30.0  # the learnt rate stays within this factor of the lane's starting guess either way
BATCH_SECONDS = 0.1  # a batch takes more jobs only while its estimate stays under this: a long batch holds the queue


@dataclass(slots=True)
class _Item(Generic[J, R]):
    order: tuple[float, int]  # (estimated seconds, arrival number): the queue's order
    job: J | None  # None once its caller has gone
    cost: int
    work: float
    seconds: float  # estimated when queued
    size: int
    future: asyncio.Future[R]
    lane: Lane[J, R]
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True  # still counted in the queue's totals
    deadline: asyncio.TimerHandle | None = None

    def __lt__(self, other: _Item[Any, Any]) -> bool:
        return self.order < other.order


class Lane(Generic[J, R]):
    """One operation's queue (create with Scheduler.lane)."""

    def __init__(
        self,
        run: Callable[[list[J]], Awaitable[list[R]]],
        *,
        max_cost: int,
        seconds_per_unit: float,
        on_batch: BatchObserver | None,
        on_queue: QueueObserver | None,
    ) -> None:
        self.run = run
        self.max_cost = max_cost
        self.seconds_per_unit = seconds_per_unit
        self._guess = seconds_per_unit
        self.on_batch = on_batch
        self.on_queue = on_queue
        self.heap: list[_Item[J, R]] = []

    def seconds(self, work: float) -> float:
        return work * self.seconds_per_unit

    def learn(self, work: float, seconds: float) -> None:
        if work > 0:
            observed = min(max(seconds / work, self._guess / RATE_RANGE), self._guess * RATE_RANGE)
            self.seconds_per_unit += RATE_SMOOTHING * (observed - self.seconds_per_unit)

    def head(self) -> _Item[J, R] | None:
        """The first live job (dropping those whose callers have gone), not removed."""
        heap = self.heap
        while heap and heap[0].job is None:
            heapq.heappop(heap)
        return heap[0] if heap else None


class Scheduler:
    """`await submit(lane, job, cost, work)` -> lane.run([..., job, ...])[its index]."""

    def __init__(self, *, max_wait_s: float, max_queue_s: float, max_queued_bytes: int) -> None:
        self.max_wait_s = max_wait_s
        self.max_queue_s = max_queue_s
        self.max_queued_bytes = max_queued_bytes
        self.lanes: list[Lane[Any, Any]] = []
        self.queued_jobs = 0  # live queued jobs, and their estimated seconds and bytes
        self.queued_seconds = 0.0
        self.queued_bytes = 0
        self._running_until = 0.0  # when the running batch should end, by its estimate
        self._arrivals = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def lane(
        self,
        run: Callable[[list[J]], Awaitable[list[R]]],
        *,
        max_cost: int,
        seconds_per_unit: float,
        on_batch: BatchObserver | None = None,
        on_queue: QueueObserver | None = None,
    ) -> Lane[J, R]:
        lane = Lane(run, max_cost=max_cost, seconds_per_unit=seconds_per_unit, on_batch=on_batch,
                    on_queue=on_queue)  # fmt: skip
        self.lanes.append(lane)
        return lane

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="scheduler")

    async def stop(self) -> None:
        """Refuse new jobs, finish the queued ones (within their deadline), then end the worker."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, lane: Lane[J, R], job: J, cost: int, work: float, size: int = 0) -> R:
        if self._closed:
            raise unavailable("the service is shutting down", kind="shutting-down")
        seconds = lane.seconds(work)
        order = (seconds, next(self._arrivals))
        wait = self.expected_wait(order)
        if wait > self.max_queue_s:
            self._note(lane, "overloaded")
            raise unavailable(
                f"overloaded: this request would wait about {wait:.1f} s for the work queued before it (the limit is "
                f"{self.max_queue_s:g} s); try again shortly",
                kind="overloaded", title="Overloaded", retry_after=wait - self.max_queue_s,
            )  # fmt: skip
        if size and self.queued_bytes + size > self.max_queued_bytes:
            self._note(lane, "queue_bytes")
            raise unavailable(
                f"overloaded: {self.queued_bytes} bytes of requests are already waiting (the limit is "
                f"{self.max_queued_bytes}); try again shortly",
                kind="overloaded", title="Overloaded", retry_after=self._running_rest(),
            )  # fmt: skip
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        item: _Item[J, R] = _Item(order, job, cost, work, seconds, size, future, lane)
        future.add_done_callback(lambda _: self._settle(item))
        item.deadline = future.get_loop().call_later(self.max_queue_s, self._expire, item)
        heapq.heappush(lane.heap, item)
        self.queued_jobs += 1
        self.queued_seconds += seconds
        self.queued_bytes += size
        self._wakeup.set()
        return await future

    def expected_wait(self, order: tuple[float, int]) -> float:
        """Estimated seconds until a job of this order would start: the running batch's rest, then every live queued
        job that comes before it (cheap while the whole queue is short; one pass over it otherwise)."""
        wait = self._running_rest()
        if wait + self.queued_seconds <= self.max_queue_s:
            return wait + self.queued_seconds
        for lane in self.lanes:
            wait += sum(item.seconds for item in lane.heap if item.queued and item.order < order)
        return wait

    def _running_rest(self) -> float:
        return max(0.0, self._running_until - time.perf_counter())

    def _settle(self, item: _Item[Any, Any]) -> None:
        """A job's future is done: if it was still queued (its caller went away), take it out of the accounts and
        let go of its request's bytes; the worker drops it from the heap."""
        if item.queued:
            self._unqueue(item)
            item.job = None
            self._note(item.lane, "abandoned")

    def _unqueue(self, item: _Item[Any, Any]) -> None:
        item.queued = False
        if item.deadline is not None:
            item.deadline.cancel()
        self.queued_jobs -= 1
        # Exactly 0 when empty: float sums of added and removed estimates would drift over a long run.
        self.queued_seconds = self.queued_seconds - item.seconds if self.queued_jobs else 0.0
        self.queued_bytes -= item.size

    def _note(self, lane: Lane[Any, Any], reason: str) -> None:
        if lane.on_queue is not None:
            lane.on_queue(reason)

    def _next_lane(self) -> Lane[Any, Any] | None:
        """The lane whose first live job comes first."""
        best: Lane[Any, Any] | None = None
        best_head: _Item[Any, Any] | None = None
        for lane in self.lanes:
            head = lane.head()
            if head is not None and (best_head is None or head.order < best_head.order):
                best, best_head = lane, head
        return best

    def _expire(self, item: _Item[Any, Any]) -> None:
        """A job's deadline timer: still queued after max_queue_s, it is answered 503 (the worker drops it)."""
        if not item.queued:
            return
        self._unqueue(item)
        item.job = None
        self._note(item.lane, "deadline")
        item.future.set_exception(
            unavailable(
                f"overloaded: this request waited {self.max_queue_s:g} s without its turn coming; try again shortly",
                kind="overloaded",
                title="Overloaded",
                retry_after=self._running_rest() + self.queued_seconds,
            )
        )

    def _take(self, lane: Lane[J, R], batch: list[_Item[J, R]], cost: int, seconds: float) -> tuple[int, float]:
        """Move the lane's live jobs into batch, in order, while they fit; -> the batch's new cost and seconds."""
        while (head := lane.head()) is not None:
            if batch and (cost + head.cost > lane.max_cost or seconds + head.seconds > BATCH_SECONDS):
                break
            heapq.heappop(lane.heap)
            self._unqueue(head)
            batch.append(head)
            cost += head.cost
            seconds += head.seconds
        return cost, seconds

    async def _worker(self) -> None:
        while True:
            lane = self._next_lane()
            if lane is None:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Item[Any, Any]] = []
            cost, seconds = self._take(lane, batch, 0, 0.0)
            if self.max_wait_s > 0:
                deadline = batch[0].enqueued + self.max_wait_s
                while cost < lane.max_cost and lane.head() is None and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                    cost, seconds = self._take(lane, batch, cost, seconds)
            await self._run_batch(lane, batch, cost, seconds)

    async def _run_batch(self, lane: Lane[Any, Any], batch: list[_Item[Any, Any]], cost: int, seconds: float) -> None:
        live = [item for item in batch if not item.future.done()]  # a caller may have gone while the batch formed
        if not live:
            return
        started = time.perf_counter()
        self._running_until = started + seconds
        try:
            results = await lane.run([item.job for item in live])
        except Exception as e:  # the whole batch failed: every caller gets the error
            if isinstance(e, ServiceError):
                log.warning("batch of %d requests failed: %s", len(live), e)
            else:
                log.exception("batch of %d requests failed", len(live))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        finally:
            self._running_until = 0.0
        took = time.perf_counter() - started
        lane.learn(sum(item.work for item in live), took)
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        if lane.on_batch is not None:
            lane.on_batch(len(live), sum(item.cost for item in live), [started - item.enqueued for item in live], took)
