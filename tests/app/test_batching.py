"""The scheduler on its own (no model): batching, costs, errors, shortest-first order, admission by work, the queue's
deadline and byte budget, cancelled callers, learning a lane's rate, and draining."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.core.errors import ServiceError
from app.serving.scheduler import Lane, Scheduler


class Recorder:
    """An async batch function that records the batches it was given and answers each job with job * 10. While its
    gate is shut, batches wait; `delay` makes every batch take that long."""

    def __init__(self, fail_on: int | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, jobs: list[int]) -> list[int]:
        await asyncio.wait_for(self.gate.wait(), 5)
        self.batches.append(list(jobs))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_on in jobs:
            raise RuntimeError("boom")
        return [j * 10 for j in jobs]


def run(coro):
    return asyncio.run(coro)


async def _with_scheduler(rec, body, *, max_cost=8, seconds_per_unit=0.001, **kw):
    options = {"max_wait_s": 0.05, "max_queue_s": 10.0, "max_queued_bytes": 10**9} | kw
    scheduler = Scheduler(**options)
    lane = scheduler.lane(rec, max_cost=max_cost, seconds_per_unit=seconds_per_unit)
    scheduler.start()
    try:
        return await body(scheduler, lane)
    finally:
        await scheduler.stop()


async def _running(s: Scheduler, lane: Lane, rec: Recorder, job: int = 0, work: float = 1.0) -> asyncio.Future:
    """Submits `job` with the gate shut and waits until its batch is running (held at the gate)."""
    rec.gate.clear()
    first = asyncio.ensure_future(s.submit(lane, job, 1, work))
    for _ in range(100):
        await asyncio.sleep(0.005)
        if not lane.heap and s._running_until:
            return first
    raise AssertionError("the first batch never started")


def test_concurrent_jobs_share_a_batch_and_each_gets_its_own_result():
    calls: list[tuple[int, int]] = []

    def on_batch(requests, cost, queue_waits, seconds) -> None:
        assert len(queue_waits) == requests and seconds >= 0
        calls.append((requests, cost))

    async def main():
        rec = Recorder()
        s = Scheduler(max_wait_s=0.05, max_queue_s=10.0, max_queued_bytes=10**9)
        lane = s.lane(rec, max_cost=8, seconds_per_unit=0.001, on_batch=on_batch)
        s.start()
        try:
            return await asyncio.gather(*(s.submit(lane, j, 2, 1.0) for j in range(4))), rec.batches
        finally:
            await s.stop()

    results, batches = run(main())
    assert results == [0, 10, 20, 30]
    assert batches == [[0, 1, 2, 3]]
    assert calls == [(4, 8)]


def test_a_batch_never_costs_more_than_max_cost():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            return await asyncio.gather(*(s.submit(lane, j, 3, 1.0) for j in range(5))), rec.batches

        return await _with_scheduler(rec, body, max_cost=7)

    results, batches = run(main())
    assert results == [0, 10, 20, 30, 40]
    assert [len(batch) for batch in batches] == [2, 2, 1]


def test_a_job_costlier_than_max_cost_runs_alone():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            return await asyncio.gather(s.submit(lane, 1, 2, 1), s.submit(lane, 2, 50, 1), s.submit(lane, 3, 2, 1))

        return await _with_scheduler(rec, body, max_cost=8), rec.batches

    results, batches = run(main())
    assert results == [10, 20, 30]
    assert [2] in batches and all(len(batch) == 1 or 2 not in batch for batch in batches)


def test_without_waiting_a_lone_job_runs_at_once():
    async def main():
        async def body(s, lane):
            timer = asyncio.ensure_future(asyncio.sleep(1.0))  # an order, not a bound on the clock: the job is
            await s.submit(lane, 1, 1, 1.0)  # answered before a second's timer started with it, however busy
            return timer.done()

        return await _with_scheduler(Recorder(), body, max_wait_s=0.0)

    assert run(main()) is False


def test_jobs_arriving_while_a_batch_runs_form_the_next_batch():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = await _running(s, lane, rec)
            rest = [asyncio.ensure_future(s.submit(lane, j, 1, 1.0)) for j in range(1, 4)]
            await asyncio.sleep(0.01)
            rec.gate.set()
            return await asyncio.gather(first, *rest), rec.batches

        return await _with_scheduler(rec, body, max_wait_s=0.0)

    results, batches = run(main())
    assert results == [0, 10, 20, 30]
    assert batches == [[0], [1, 2, 3]]


def test_shorter_jobs_run_first_and_equal_ones_in_order_of_arrival():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = await _running(s, lane, rec)
            work = {1: 50.0, 2: 5.0, 3: 50.0, 4: 1.0, 5: 5.0}
            rest = [asyncio.ensure_future(s.submit(lane, j, 8, w)) for j, w in work.items()]  # one per batch
            await asyncio.sleep(0.01)
            rec.gate.set()
            await asyncio.gather(first, *rest)
            return rec.batches

        return await _with_scheduler(rec, body, max_wait_s=0.0)

    assert run(main()) == [[0], [4], [2], [5], [1], [3]]


def test_a_job_that_would_wait_too_long_is_refused_at_once_and_a_short_one_still_served():
    """Large jobs saturate the queue (each 0.3 s, the limit 1 s): the next large one would wait over a second and is
    refused at once, with Retry-After; a small one would run before every queued large one, and is admitted."""

    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = await _running(s, lane, rec, work=300)  # 0.3 s at 0.001 s per unit
            large = [asyncio.ensure_future(s.submit(lane, j, 8, 300.0)) for j in range(1, 4)]
            await asyncio.sleep(0)
            started = time.perf_counter()
            with pytest.raises(ServiceError) as refused:
                await s.submit(lane, 9, 8, 300.0)
            refused_after = time.perf_counter() - started
            small = asyncio.ensure_future(s.submit(lane, 5, 1, 1.0))
            await asyncio.sleep(0.01)
            rec.gate.set()
            results = await asyncio.gather(first, small, *large)
            return refused.value, refused_after, results, rec.batches

        return await _with_scheduler(rec, body, max_wait_s=0.0, max_queue_s=1.0)

    error, refused_after, results, batches = run(main())
    assert error.status == 503 and error.kind == "overloaded" and int(error.headers["Retry-After"]) >= 1
    # "At once": well before the 1 s deadline that refuses a job that waited (whose kind is not "overloaded").
    assert "1 s" in error.detail and refused_after < 0.5
    assert results == [0, 50, 10, 20, 30]
    assert batches[1] == [5]  # the small one ran next


def test_a_job_still_queued_at_its_deadline_is_refused_then_even_while_a_batch_hangs():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = await _running(s, lane, rec)  # held at the gate: the engine "hangs"
            started = time.perf_counter()
            with pytest.raises(ServiceError) as e:
                await s.submit(lane, 1, 1, 1.0)
            waited = time.perf_counter() - started
            rec.gate.set()
            await first
            return e.value, waited, rec.batches

        return await _with_scheduler(rec, body, max_wait_s=0.0, max_queue_s=0.2)

    error, waited, batches = run(main())
    assert error.status == 503 and error.headers["Retry-After"] and "waited" in error.detail
    assert 0.15 < waited < 1.0
    assert batches == [[0]]  # the expired job never ran


def test_queued_bytes_are_bounded():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = await _running(s, lane, rec)
            held = [asyncio.ensure_future(s.submit(lane, j, 1, 1.0, size=400)) for j in (1, 2)]
            await asyncio.sleep(0)
            with pytest.raises(ServiceError) as e:
                await s.submit(lane, 3, 1, 1.0, size=400)
            rec.gate.set()
            await asyncio.gather(first, *held)
            after = await s.submit(lane, 4, 1, 1.0, size=400)  # the bytes were given back
            return e.value, after

        return await _with_scheduler(rec, body, max_wait_s=0.0, max_queued_bytes=1000)

    error, after = run(main())
    assert error.status == 503 and "bytes" in error.detail and after == 40


def test_cancelled_callers_leave_the_queue_at_once_and_their_jobs_never_run():
    """A burst of large jobs abandoned by their clients: the queue forgets their work at once (a job it refused while
    they were queued is admitted next) and the worker never runs them."""

    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = await _running(s, lane, rec)
            burst = [asyncio.ensure_future(s.submit(lane, j, 8, 400.0)) for j in range(1, 6)]
            await asyncio.sleep(0)
            assert s.queued_seconds == pytest.approx(2.0)
            with pytest.raises(ServiceError):
                await s.submit(lane, 6, 8, 500.0)
            for job in burst:
                job.cancel()
            await asyncio.sleep(0)
            queued_after = s.queued_seconds
            kept = asyncio.ensure_future(s.submit(lane, 7, 8, 500.0))
            await asyncio.sleep(0.01)
            rec.gate.set()
            return queued_after, await first, await kept, rec.batches

        return await _with_scheduler(rec, body, max_wait_s=0.0, max_queue_s=1.8)

    queued_after, first, kept, batches = run(main())
    assert queued_after == 0 and (first, kept) == (0, 70)
    assert batches == [[0], [7]]


def test_a_lane_learns_its_rate_from_the_batches_it_runs():
    async def main():
        rec = Recorder(delay=0.05)

        async def body(s, lane):
            observed = []
            for j in range(12):
                started = time.perf_counter()
                await s.submit(lane, j, 1, 10.0)  # at least 0.005 s per unit: the batch sleeps 0.05 s
                observed.append((time.perf_counter() - started) / 10.0)
            return lane.seconds_per_unit, max(observed)

        return await _with_scheduler(rec, body, max_wait_s=0.0, seconds_per_unit=0.0005)

    # Learnt from the guess of 0.0005 towards what the batches took (on a busy machine they take longer, and the
    # rate follows them: no bound on the clock but the batches' own).
    learnt, slowest = run(main())
    assert 0.004 < learnt <= slowest


def test_lanes_share_one_worker_and_the_shortest_head_goes_first():
    async def main():
        log: list[tuple[str, list[int], int]] = []
        gate = asyncio.Event()
        running = 0

        def recorder(name: str):
            async def run(jobs: list[int]) -> list[int]:
                nonlocal running
                running += 1
                log.append((name, list(jobs), running))
                await asyncio.wait_for(gate.wait(), 5)
                running -= 1
                return [j * 10 for j in jobs]

            return run

        s = Scheduler(max_wait_s=0.0, max_queue_s=10.0, max_queued_bytes=10**9)
        lane_a = s.lane(recorder("a"), max_cost=8, seconds_per_unit=0.001)
        lane_b = s.lane(recorder("b"), max_cost=8, seconds_per_unit=0.001)
        s.start()
        try:
            first = asyncio.ensure_future(s.submit(lane_a, 0, 1, 1.0))
            await asyncio.sleep(0.02)
            jobs = [
                asyncio.ensure_future(s.submit(lane_a, 1, 8, 50.0)),
                asyncio.ensure_future(s.submit(lane_b, 2, 8, 5.0)),
            ]
            await asyncio.sleep(0.02)
            assert len(log) == 1  # one batch at a time, whichever the lane
            gate.set()
            return await asyncio.gather(first, *jobs), log
        finally:
            await s.stop()

    results, log = run(main())
    assert results == [0, 10, 20]
    assert log == [("a", [0], 1), ("b", [2], 1), ("a", [1], 1)]


def test_a_failing_batch_fails_its_callers_and_the_scheduler_goes_on():
    async def main():
        async def body(s, lane):
            results = await asyncio.gather(*(s.submit(lane, j, 1, 1.0) for j in range(3)), return_exceptions=True)
            return results, await s.submit(lane, 7, 1, 1.0)

        return await _with_scheduler(Recorder(fail_on=2), body)

    results, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after == 70


def test_stop_finishes_queued_jobs_then_refuses_new_ones():
    async def main():
        rec = Recorder()
        s = Scheduler(max_wait_s=0.0, max_queue_s=10.0, max_queued_bytes=10**9)
        lane = s.lane(rec, max_cost=1, seconds_per_unit=0.001)
        s.start()
        first = await _running(s, lane, rec)
        jobs = [first] + [asyncio.ensure_future(s.submit(lane, j, 1, 1.0)) for j in (1, 2)]
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(s.stop())
        await asyncio.sleep(0.01)
        rec.gate.set()
        await stopping
        with pytest.raises(ServiceError) as e:
            await s.submit(lane, 9, 1, 1.0)
        return [j.result() for j in jobs], e.value.status

    assert run(main()) == ([0, 10, 20], 503)


def test_with_a_wait_a_batch_fills_until_the_first_job_has_waited_max_wait():
    async def main():
        rec = Recorder()

        async def body(s, lane):
            first = asyncio.ensure_future(s.submit(lane, 0, 1, 1.0))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(s.submit(lane, 1, 1, 1.0))
            return await asyncio.gather(first, second), rec.batches

        return await _with_scheduler(rec, body, max_wait_s=0.2)

    results, batches = run(main())
    assert results == [0, 10] and batches == [[0, 1]]
