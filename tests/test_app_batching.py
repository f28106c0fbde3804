"""The micro-batcher on its own: grouping, limits, errors, overload and draining (no model needed)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.batching import Batcher
from app.errors import ServiceError


class Recorder:
    """A batch function that records the batches it was given and answers each job with job * 10."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, jobs: list[int]) -> list[int]:
        self.gate.wait(5)
        self.batches.append(list(jobs))
        if self.fail_on in jobs:
            raise RuntimeError("boom")
        return [j * 10 for j in jobs]


class Observed:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def on_batch(self, requests, samples, queue_waits, seconds) -> None:
        assert len(queue_waits) == requests and seconds >= 0
        self.calls.append((requests, samples))


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(run_fn, body, **kw):
    with ThreadPoolExecutor(1) as pool:
        options = {"max_batch": 8, "max_wait_s": 0.05, "max_pending": 100} | kw
        batcher = Batcher(run_fn, pool, **options)
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()


def test_concurrent_jobs_share_a_batch_and_each_gets_its_own_result():
    rec, obs = Recorder(), Observed()

    async def body(b):
        return await asyncio.gather(*(b.submit(j, 1) for j in range(5)))

    assert run(_with_batcher(rec, body, observer=obs)) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]
    assert obs.calls == [(5, 5)]


def test_a_batch_never_holds_more_than_max_batch_samples():
    rec = Recorder()

    async def body(b):
        return await asyncio.gather(*(b.submit(j, 3) for j in range(5)))

    assert run(_with_batcher(rec, body, max_batch=7)) == [0, 10, 20, 30, 40]
    assert [len(batch) for batch in rec.batches] == [2, 2, 1]


def test_a_job_larger_than_max_batch_runs_alone():
    rec = Recorder()

    async def body(b):
        return await asyncio.gather(b.submit(1, 2), b.submit(2, 50), b.submit(3, 2))

    assert run(_with_batcher(rec, body, max_batch=8)) == [10, 20, 30]
    assert [2] in rec.batches and all(len(batch) == 1 or 2 not in batch for batch in rec.batches)


def test_without_waiting_a_lone_job_runs_at_once():
    rec = Recorder()

    async def body(b):
        loop = asyncio.get_running_loop()
        start = loop.time()
        await b.submit(1, 1)
        return loop.time() - start

    assert run(_with_batcher(rec, body, max_wait_s=0.0)) < 0.5


def test_jobs_arriving_while_a_batch_runs_form_the_next_batch():
    rec = Recorder()
    rec.gate.clear()

    async def body(b):
        first = asyncio.ensure_future(b.submit(0, 1))
        await asyncio.sleep(0.1)  # the first batch is now running (blocked on the gate)
        rest = [asyncio.ensure_future(b.submit(j, 1)) for j in range(1, 4)]
        await asyncio.sleep(0.01)
        rec.gate.set()
        return await asyncio.gather(first, *rest)

    assert run(_with_batcher(rec, body, max_wait_s=0.0)) == [0, 10, 20, 30]
    assert rec.batches == [[0], [1, 2, 3]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    rec = Recorder(fail_on=2)

    async def body(b):
        results = await asyncio.gather(*(b.submit(j, 1) for j in range(3)), return_exceptions=True)
        after = await b.submit(7, 1)
        return results, after

    results, after = run(_with_batcher(rec, body))
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after == 70


def test_too_many_pending_jobs_is_a_503_overloaded():
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

    error = run(_with_batcher(rec, body, max_pending=2, max_wait_s=0.0))
    assert error.status == 503 and error.kind == "overloaded" and error.headers["Retry-After"]


def test_stop_finishes_queued_jobs_then_refuses_new_ones():
    rec = Recorder()
    rec.gate.clear()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(rec, pool, max_batch=1, max_wait_s=0.0, max_pending=10)
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


def test_a_cancelled_caller_is_skipped():
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
        return await first, await kept

    assert run(_with_batcher(rec, body, max_wait_s=0.0)) == (0, 20)
    assert [1] not in rec.batches and all(1 not in batch for batch in rec.batches)


def test_without_an_executor_the_batch_function_is_awaited():
    calls: list[list[int]] = []

    async def run_async(jobs):  # e.g. handing the batch to another process
        calls.append(list(jobs))
        await asyncio.sleep(0.01)
        return [j + 1 for j in jobs]

    async def main():
        b = Batcher(run_async, None, max_batch=8, max_wait_s=0.0, max_pending=100)
        b.start()
        try:
            first = await b.submit(0, 1)
            rest = await asyncio.gather(*(b.submit(j, 1) for j in range(1, 6)))
            return [first, *rest]
        finally:
            await b.stop()

    assert run(main()) == [1, 2, 3, 4, 5, 6]
    assert calls[0] == [0] and sum(len(c) for c in calls) == 6 and len(calls) < 6
