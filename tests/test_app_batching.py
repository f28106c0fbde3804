"""The micro-batcher on its own: grouping, costs, errors, overload, cancelled callers and draining (no model)."""

from __future__ import annotations

import asyncio

import pytest

from app.batching import Batcher
from app.errors import ServiceError


class Recorder:
    """An async batch function that records the batches it was given and answers each job with job * 10. While its
    gate is shut, batches wait."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, jobs: list[int]) -> list[int]:
        await asyncio.wait_for(self.gate.wait(), 5)
        self.batches.append(list(jobs))
        if self.fail_on in jobs:
            raise RuntimeError("boom")
        return [j * 10 for j in jobs]


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(rec, body, **kw):
    options = {"max_cost": 8, "max_wait_s": 0.05, "max_pending": 100} | kw
    batcher = Batcher(rec, **options)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_jobs_share_a_batch_and_each_gets_its_own_result():
    calls: list[tuple[int, int]] = []

    def on_batch(requests, cost, queue_waits, seconds) -> None:
        assert len(queue_waits) == requests and seconds >= 0
        calls.append((requests, cost))

    async def main():
        rec = Recorder()

        async def body(b):
            return await asyncio.gather(*(b.submit(j, 2) for j in range(4))), rec.batches

        return await _with_batcher(rec, body, on_batch=on_batch)

    results, batches = run(main())
    assert results == [0, 10, 20, 30]
    assert batches == [[0, 1, 2, 3]]
    assert calls == [(4, 8)]


def test_a_batch_never_costs_more_than_max_cost():
    async def main():
        rec = Recorder()

        async def body(b):
            return await asyncio.gather(*(b.submit(j, 3) for j in range(5))), rec.batches

        return await _with_batcher(rec, body, max_cost=7)

    results, batches = run(main())
    assert results == [0, 10, 20, 30, 40]
    assert [len(batch) for batch in batches] == [2, 2, 1]


def test_a_job_costlier_than_max_cost_runs_alone():
    async def main():
        rec = Recorder()

        async def body(b):
            return await asyncio.gather(b.submit(1, 2), b.submit(2, 50), b.submit(3, 2)), rec.batches

        return await _with_batcher(rec, body, max_cost=8)

    results, batches = run(main())
    assert results == [10, 20, 30]
    assert [2] in batches and all(len(batch) == 1 or 2 not in batch for batch in batches)


def test_without_waiting_a_lone_job_runs_at_once():
    async def main():
        async def body(b):
            loop = asyncio.get_running_loop()
            start = loop.time()
            await b.submit(1, 1)
            return loop.time() - start

        return await _with_batcher(Recorder(), body, max_wait_s=0.0)

    assert run(main()) < 0.5


def test_jobs_arriving_while_a_batch_runs_form_the_next_batch():
    async def main():
        rec = Recorder()
        rec.gate.clear()

        async def body(b):
            first = asyncio.ensure_future(b.submit(0, 1))
            await asyncio.sleep(0.05)  # the first batch is now running (waiting at the gate)
            rest = [asyncio.ensure_future(b.submit(j, 1)) for j in range(1, 4)]
            await asyncio.sleep(0.01)
            rec.gate.set()
            return await asyncio.gather(first, *rest), rec.batches

        return await _with_batcher(rec, body, max_wait_s=0.0)

    results, batches = run(main())
    assert results == [0, 10, 20, 30]
    assert batches == [[0], [1, 2, 3]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    async def main():
        async def body(b):
            results = await asyncio.gather(*(b.submit(j, 1) for j in range(3)), return_exceptions=True)
            return results, await b.submit(7, 1)

        return await _with_batcher(Recorder(fail_on=2), body)

    results, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after == 70


def test_too_many_pending_jobs_is_a_503_overloaded():
    async def main():
        rec = Recorder()
        rec.gate.clear()

        async def body(b):
            running = asyncio.ensure_future(b.submit(0, 1))
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(b.submit(j, 1)) for j in (1, 2)]
            await asyncio.sleep(0)
            with pytest.raises(ServiceError) as e:
                await b.submit(3, 1)
            rec.gate.set()
            await asyncio.gather(running, *queued)
            return e.value

        return await _with_batcher(rec, body, max_pending=2, max_wait_s=0.0)

    error = run(main())
    assert error.status == 503 and error.kind == "overloaded" and error.headers["Retry-After"]


def test_stop_finishes_queued_jobs_then_refuses_new_ones():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        b = Batcher(rec, max_cost=1, max_wait_s=0.0, max_pending=10)
        b.start()
        jobs = [asyncio.ensure_future(b.submit(j, 1)) for j in range(3)]
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.01)
        rec.gate.set()
        await stopping
        with pytest.raises(ServiceError) as e:
            await b.submit(9, 1)
        return [j.result() for j in jobs], e.value.status

    assert run(main()) == ([0, 10, 20], 503)


def test_a_cancelled_callers_job_is_dropped_before_it_runs():
    async def main():
        rec = Recorder()
        rec.gate.clear()

        async def body(b):
            first = asyncio.ensure_future(b.submit(0, 1))
            await asyncio.sleep(0.05)
            gone = asyncio.ensure_future(b.submit(1, 1))
            kept = asyncio.ensure_future(b.submit(2, 1))
            await asyncio.sleep(0)
            gone.cancel()
            rec.gate.set()
            return (await first, await kept), rec.batches

        return await _with_batcher(rec, body, max_wait_s=0.0)

    results, batches = run(main())
    assert results == (0, 20)
    assert all(1 not in batch for batch in batches)


def test_with_a_wait_a_batch_fills_until_the_first_job_has_waited_max_wait():
    async def main():
        rec = Recorder()

        async def body(b):
            first = asyncio.ensure_future(b.submit(0, 1))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(b.submit(1, 1))
            return await asyncio.gather(first, second), rec.batches

        return await _with_batcher(rec, body, max_wait_s=0.2)

    results, batches = run(main())
    assert results == [0, 10] and batches == [[0, 1]]
