"""Hostile clients against the real service (`python -m app` on 127.0.0.1, the tiny test model, raw sockets): slow
and idle connections, abandoned bursts of large requests, large ones saturating it, oversize and invalid bodies,
lying and malformed Open Inference Protocol requests (/v2), too many connections, and SIGTERM with work in flight.
Every test asserts that no answer is a 5xx other than 503, that nothing waits without bound (every wait here has a
deadline), and, for bodies, that memory stays flat.

The server's timeouts are set short (a second or two) so the suite stays well under a minute or two; the defaults
are in docs/security.md. Marked slow: `bash tests/run.sh -m slow -k hostile`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.operations.generate import max_generate_body_bytes
from tests.conftest import D, free_port, wait_for, wait_ready
from tests.system.test_serve import ROOT

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 60
SETTINGS = {
    "CVAE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "CVAE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "CVAE_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
    "CVAE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "CVAE_SHUTDOWN_DELAY_S": "0.5",
}
# The largest /generate: 1,024 tiles at scale 4, a 3848x3848 PNG.
BIG = json.dumps({"digit": list(range(10)) * 3 + [0, 1], "n": 32, "scale": 4, "seed": 1}).encode()
SMALL = b'{"digit": 3, "n": 8, "seed": 1}'


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        """The server process's resident memory (its inference process not included)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, flags=re.M).group(1)) / 1024

    def metric(self, series: str) -> float:
        for line in httpx.get(f"{self.base}/metrics", timeout=5).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0


@contextlib.contextmanager
def serving(model_dir: Path, log: Path, env: dict[str, str]) -> Iterator[Server]:
    """`python -m app` serving model_dir with the settings in env, its output in log."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "CVAE_MODEL_DIR": str(model_dir), **env},
        )  # fmt: skip
    server = Server(port, proc, log)
    try:
        wait_ready(port, proc, log.read_text)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with serving(tiny_model_dir, log, {**SETTINGS, "CVAE_ACCESS_LOG": "false"}) as s:
        yield s
    assert "Traceback" not in s.log.read_text()


# --- a raw HTTP/1.1 client ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def request_bytes(method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader, started: float, timeout: float) -> Answer | None:
    """The next response on the connection; None if the server closed it first."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
    return Answer(int(lines[0].split()[1]), headers, body, time.perf_counter() - started)


async def ask(port: int, raw: bytes, timeout: float = 30.0) -> Answer | None:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_answer(reader, started, timeout)
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the server closes the connection (reads nothing else)."""
    started = time.perf_counter()
    data = await asyncio.wait_for(reader.read(1), timeout)
    assert data == b"", data
    return time.perf_counter() - started


async def livez_latencies(port: int, stop: asyncio.Event) -> list[float]:
    latencies = []
    while not stop.is_set():
        answer = await ask(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert answer is not None and answer.status == 200
        latencies.append(answer.seconds)
        await asyncio.sleep(0.02)
    return latencies


def bursts(
    server: Server, bodies: list[bytes], *, timeout: float
) -> tuple[list[Answer | None], list[list[Answer | None]], float, float, list[float]]:
    """Bursts of `bodies` (each 4 times at once, 3 times over) while /livez is probed: one burst, then the server's
    RSS, three more, the RSS again. -> (the first burst's answers, the later bursts', RSS before and after in MiB,
    /livez's latencies)."""

    async def burst() -> list[Answer | None]:
        answers = []
        for _ in range(3):
            answers += await asyncio.gather(*(ask(server.port, body, timeout=timeout) for body in bodies * 4))
        return answers

    async def main() -> tuple[list[Answer | None], list[list[Answer | None]], float, float, list[float]]:
        stop = asyncio.Event()
        probe = asyncio.ensure_future(livez_latencies(server.port, stop))
        first = await burst()
        await asyncio.sleep(0.5)
        before = server.rss_mib()
        later = [await burst() for _ in range(3)]
        await asyncio.sleep(0.5)
        after = server.rss_mib()
        stop.set()
        return first, later, before, after, await probe

    return asyncio.run(main())


def assert_no_5xx_but_503(answers: list[Answer | None]) -> None:
    bad = [a.status for a in answers if a is not None and a.status >= 500 and a.status != 503]
    assert not bad, bad
    for a in answers:
        if a is not None and a.status == 503:
            assert a.headers["retry-after"] and a.headers["content-type"] == "application/problem+json"


# --- slow and idle connections --------------------------------------------------------------------------------


def test_connections_that_send_no_whole_head_are_closed_after_the_header_timeout(server):
    async def main():
        async def slowloris(idle: bool) -> float:
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if not idle:

                async def drip() -> None:
                    with contextlib.suppress(ConnectionError):
                        for byte in b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                            writer.write(bytes([byte]))
                            await writer.drain()
                            await asyncio.sleep(0.1)

                dripping = asyncio.ensure_future(drip())
            await closed_within(reader, HEADER_TIMEOUT_S + 3)
            if not idle:
                dripping.cancel()
            writer.close()
            return time.perf_counter() - started

        stop = asyncio.Event()
        probe = asyncio.ensure_future(livez_latencies(server.port, stop))
        held = await asyncio.gather(*(slowloris(idle=i % 2 == 0) for i in range(30)))
        stop.set()
        return held, await probe

    held, livez = asyncio.run(main())
    # Not before the timeout; after it, closed_within's own deadline bounds the wait (a loaded machine is slower).
    assert all(h > HEADER_TIMEOUT_S * 0.9 for h in held), held
    assert max(livez) < HEADER_TIMEOUT_S, max(livez)  # the probe was answered while the held connections waited


def test_a_kept_alive_connection_left_idle_is_closed(server):
    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader, time.perf_counter(), 5)).status == 200
        return await closed_within(reader, KEEP_ALIVE_S + 3)

    assert KEEP_ALIVE_S * 0.9 < asyncio.run(main()) < KEEP_ALIVE_S + 3


@pytest.mark.parametrize("path", ["/generate", "/encode"])
def test_a_body_that_trickles_in_is_cut_short_with_408(server, path):
    async def main():
        content_type = "application/json" if path == "/generate" else "multipart/form-data; boundary=b"
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 5000\r\n\r\n"
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head.encode())

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        dripping = asyncio.ensure_future(drip())
        answer = await read_answer(reader, started, BODY_TIMEOUT_S + 5)
        closed = await closed_within(reader, 3)
        dripping.cancel()
        writer.close()
        return answer, closed

    answer, closed = asyncio.run(main())
    assert answer.status == 408 and answer.headers["connection"] == "close"
    assert BODY_TIMEOUT_S * 0.9 < answer.seconds < BODY_TIMEOUT_S + 5 and closed < 3


# --- bursts and saturation ------------------------------------------------------------------------------------


def test_an_abandoned_burst_of_large_requests_costs_almost_nothing_and_a_small_request_stays_prompt(server):
    """40 of the largest /generate, each dropped by its client 20 ms after sending it: the queued ones are dropped
    unrun, and the next small request is served within the time of at most the one batch already running (or
    refused at once)."""
    batches = 'cvae_batch_size_requests_count{model="digits",operation="generate"}'
    abandoned = 'cvae_queue_events_total{model="digits",operation="generate",reason="abandoned"}'

    async def main():
        before = server.metric(batches), server.metric(abandoned)
        connections = []
        for _ in range(40):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request_bytes("POST", "/generate", BIG))
            connections.append(writer)
        await asyncio.sleep(0.02)
        for writer in connections:
            writer.close()
        await asyncio.sleep(0.01)
        smalls = [await ask(server.port, request_bytes("POST", "/generate", SMALL), timeout=10) for _ in range(5)]
        deadline = time.monotonic() + 30
        while server.metric(abandoned) - before[1] < 5:  # the scheduler's accounts, not a sleep
            assert time.monotonic() < deadline, "the abandoned requests were never dropped"
            await asyncio.sleep(0.05)
        return before, smalls

    (batches_before, abandoned_before), smalls = asyncio.run(main())
    assert_no_5xx_but_503(smalls)
    # Counters, not the clock: the first small request is served or refused (the queue was full), the rest served,
    # and almost none of the abandoned work ran.
    assert smalls[0].status in (200, 503) and all(s.status == 200 for s in smalls[1:]), [s.status for s in smalls]
    ran = server.metric(batches) - batches_before - len(smalls)
    assert ran <= 5, f"{ran} batches ran for 40 abandoned requests"
    assert server.metric(abandoned) - abandoned_before >= 5  # the rest were refused at once (the queue was full)
    print(f"\nsmall requests after an abandoned burst: {[round(s.seconds * 1000, 1) for s in smalls]} ms")


def test_small_requests_stay_prompt_while_large_ones_saturate_the_service(server):
    """8 clients send the largest /generate back to back for 3 s; a small request every 50 ms meanwhile is served
    ahead of them (shortest first) or refused at once; the large ones are served or refused, never kept waiting
    beyond the queue's limit."""

    async def main():
        stop = asyncio.Event()
        large: list[Answer | None] = []

        async def hammer() -> None:
            while not stop.is_set():
                large.append(await ask(server.port, request_bytes("POST", "/generate", BIG), timeout=15))

        hammers = [asyncio.ensure_future(hammer()) for _ in range(8)]
        await asyncio.sleep(0.5)
        small = []
        deadline = time.perf_counter() + 3
        while time.perf_counter() < deadline:
            small.append(await ask(server.port, request_bytes("POST", "/generate", SMALL), timeout=10))
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*hammers)
        return small, large

    small, large = asyncio.run(main())
    assert_no_5xx_but_503(small + large)
    served = sorted(s.seconds for s in small if s.status == 200)
    refused = [s.seconds for s in small if s.status == 503]
    assert served and all(s.status in (200, 503) for s in small)
    # Order, not the clock: small requests overtake the large ones, so they wait less than the large ones do, and a
    # refusal is faster still (it waits for nothing).
    large_served = sorted(a.seconds for a in large if a.status == 200)
    assert large_served, Counter(a.status for a in large)
    assert served[len(served) // 2] < large_served[len(large_served) // 2], (served, large_served)
    assert max(refused, default=0) < large_served[len(large_served) // 2], (refused, large_served)
    print(
        f"\nsmall while large saturate: {len(served)} served (median {served[len(served) // 2] * 1000:.0f} ms, "
        f"max {served[-1] * 1000:.0f} ms), {len(refused)} refused; large: {Counter(a.status for a in large)}"
    )


def test_connections_over_the_cap_are_answered_503_and_closed(server):
    async def main():
        held = []
        for _ in range(MAX_CONNECTIONS + 3):
            held.append(await asyncio.open_connection("127.0.0.1", server.port))
        reader, writer = held[-1]
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        over = await read_answer(reader, time.perf_counter(), 5)
        closed = await closed_within(reader, 3)
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        return over, closed, await ask(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")

    over, closed, after = asyncio.run(main())
    assert over.status == 503 and over.headers["retry-after"] == "1" and over.headers["connection"] == "close"
    assert "connections" in json.loads(over.body)["detail"] and closed < 3
    assert after.status == 200


# --- oversize and invalid bodies ------------------------------------------------------------------------------


def test_oversize_bodies_are_refused_without_being_read(server):
    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.perf_counter()
        writer.write(b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000000\r\n\r\n")  # fmt: skip
        answer = await read_answer(reader, started, 5)
        writer.close()
        nan_body = b'{"digit": 1, "latent": [' + b",".join([b"NaN"] * 1_000_000) + b"]}"  # 4 MB
        too_big = await ask(server.port, request_bytes("POST", "/generate", nan_body), timeout=10)
        return answer, too_big

    declared, nans = asyncio.run(main())
    # A 413, not a 408 after BODY_TIMEOUT_S: the server answered without waiting for a body that never came.
    assert declared.status == 413
    assert nans.status == 413 and len(nans.body) < 1000


def test_memory_stays_flat_over_bursts_of_invalid_multi_megabyte_bodies(server):
    """Bodies of nearly 4 MB (the upload limit) that fail: undecodable uploads (415), /encode forms repeating a field
    (422), /generate bodies over its limit (413) and at it, full of NaN (422). After a first burst (the allocator
    grows once), further bursts leave the server's memory where it was; /livez stays prompt throughout."""
    garbage = os.urandom(3_900_000)
    form = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n' + garbage + b"\r\n"
            b'--b\r\nContent-Disposition: form-data; name="digit"\r\n\r\n1\r\n'
            b'--b\r\nContent-Disposition: form-data; name="digit"\r\n\r\n2\r\n--b--\r\n')  # fmt: skip
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    single = head + garbage + b"\r\n--b--\r\n"
    limit = max_generate_body_bytes(D)  # the tiny model's /generate limit
    nans = b'{"digit": 1, "latent": [' + b",".join([b"NaN"] * ((limit - 100) // 4)) + b"]}"
    bodies = [
        request_bytes("POST", "/encode", single, "multipart/form-data; boundary=b"),
        request_bytes("POST", "/encode", form, "multipart/form-data; boundary=b"),
        request_bytes("POST", "/generate", b"[" + b"0," * 1_900_000 + b"0]"),
        request_bytes("POST", "/generate", nans),
    ]
    expected = [415, 422, 413, 422]

    first, later, before, after, livez = bursts(server, bodies, timeout=30)
    for answers in [first, *later]:
        assert [a.status for a in answers] == expected * 12
        assert all(len(a.body) < 4096 for a in answers)
    assert after - before < 40, f"the server grew from {before:.0f} to {after:.0f} MiB"
    assert max(livez) < BODY_TIMEOUT_S, max(livez)  # probes answered throughout the bursts
    print(
        f"\nserver memory over 3 bursts of 48 invalid bodies: {before:.0f} -> {after:.0f} MiB; "
        f"/livez meanwhile at most {max(livez) * 1000:.0f} ms"
    )


# --- shutdown with work in flight -----------------------------------------------------------------------------


def test_sigterm_with_work_in_flight_answers_every_request_200_or_503_and_exits_0(tiny_model_dir, tmp_path):
    """The largest /generate queued, enough of them to keep the engine busy for several times the 1 s of grace on
    this machine (one is timed first), then SIGTERM: /readyz turns 503 at once; each request gets its PNG or a 503
    with Retry-After (cut by the deadline), or finds its connection closed; none gets a 500; the process exits 0
    with no traceback. Its logs are JSON, one object per line, every access line with the request ID its response
    carried."""
    log = tmp_path / "server.log"
    env = {**SETTINGS, "CVAE_GRACEFUL_SHUTDOWN_S": "1", "CVAE_MAX_QUEUE_WAIT_S": "600", "CVAE_LOG_FORMAT": "json"}
    with serving(tiny_model_dir, log, env) as s:

        async def main():
            await ask(s.port, request_bytes("POST", "/generate", BIG), timeout=60)  # warm
            timed = await ask(s.port, request_bytes("POST", "/generate", BIG), timeout=60)
            # Work for ~8 s of grace's worth: whatever the machine's speed, some is left at the deadline.
            count = min(400, max(30, int(8 / max(timed.seconds, 1e-3)) + 1))
            pending = [asyncio.ensure_future(ask(s.port, request_bytes("POST", "/generate", BIG), timeout=120))
                       for _ in range(count)]  # fmt: skip
            # A state, not a sleep: every request is in the server (queued or running; the scrape counts itself)
            # or already answered.
            deadline = time.monotonic() + 60
            while s.metric("cvae_http_requests_in_flight") - 1 + sum(p.done() for p in pending) < count:
                assert time.monotonic() < deadline, "the requests never reached the server"
                await asyncio.sleep(0.02)
            s.proc.send_signal(signal.SIGTERM)
            ready = await ask(s.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
            return ready, count, await asyncio.gather(*pending)

        started = time.monotonic()
        ready, count, answers = asyncio.run(main())
        code = s.proc.wait(60)
        took = time.monotonic() - started
    assert ready.status == 503
    assert code == 0, log.read_text()[-3000:]
    assert_no_5xx_but_503(answers)
    statuses = Counter(a.status if a else "closed" for a in answers)
    assert set(statuses) <= {200, 503, "closed"} and statuses[503] > 0, statuses
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text
    access = [e for e in entries if e["logger"] == "uvicorn.access" and e.get("path") == "/generate"]
    ids = {a.headers["x-request-id"] for a in answers if a is not None}
    assert {e["request_id"] for e in access} >= ids and all(e["status"] in (200, 503) for e in access)
    print(f"\nSIGTERM with {count} large requests in flight: {dict(statuses)}, exit {code} after {took:.1f} s")


def test_by_default_readyz_turns_503_before_the_port_closes(tiny_model_dir, tmp_path):
    """With the default CVAE_SHUTDOWN_DELAY_S, a balancer polling /readyz sees 503 while the port still answers."""
    env = {key: value for key, value in SETTINGS.items() if key != "CVAE_SHUTDOWN_DELAY_S"}
    with serving(tiny_model_dir, tmp_path / "server.log", {**env, "CVAE_ACCESS_LOG": "false"}) as s:
        s.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{s.base}/readyz", timeout=5).status_code == 503, 10)
        assert httpx.get(f"{s.base}/livez", timeout=5).status_code == 200
        assert s.proc.wait(20) == 0


# --- the Open Inference Protocol (/v2) ------------------------------------------------------------------------

V2_GENERATE = "/v2/models/digits-generate/infer"
V2_ENCODE = "/v2/models/digits-encode/infer"


def infer_bytes(path: str, body: bytes, header_length: str | int | None = None) -> bytes:
    """A raw infer request; header_length: its Inference-Header-Content-Length, sent as given (any text)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    if header_length is not None:
        head += f"Inference-Header-Content-Length: {header_length}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def v2_json(path: str, inputs: object, **members: object) -> bytes:
    return infer_bytes(path, json.dumps({"inputs": inputs, **members}).encode())


def v2_binary(path: str, name: str, datatype: str, shape: list[int], section: bytes, size: int | None = None) -> bytes:
    """One input as binary tensor data; size: the binary_data_size to claim instead of the section's own."""
    parameters = {"binary_data_size": len(section) if size is None else size}
    header = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "parameters": parameters}]})
    return infer_bytes(path, header.encode() + section, len(header))


def labels(data: list[object], shape: object = None, datatype: object = "INT64") -> dict[str, object]:
    return {"name": "label", "datatype": datatype, "shape": [len(data)] if shape is None else shape, "data": data}


@functools.cache
def picture() -> dict[str, object]:
    """digits-encode's input of one real picture (base64 in JSON), so that only the fault under test is one."""
    return {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png_of_a_stroke()).decode()]}


def png_of_a_stroke() -> bytes:
    buf = io.BytesIO()
    image = Image.new("L", (28, 28), 255)
    image.paste(0, (12, 4, 16, 24))
    image.save(buf, "PNG")
    return buf.getvalue()


def deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def raw(path: str, text: str) -> bytes:
    """A request whose JSON is written out (NaN, 1e999, numbers of any length: what json.dumps would not write)."""
    return infer_bytes(path, text.encode())


LABEL = '{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}'
GOOD_V2 = v2_json(V2_GENERATE, [labels([3, 3])], parameters={"seed": 1})
GOOD_JSON = json.dumps({"inputs": [labels([3, 3])], "parameters": {"seed": 1}})
ONE = struct.pack("<q", 3)
ONE_HEAD = json.dumps({"inputs": [{"name": "label", "datatype": "INT64", "shape": [1],
                                   "parameters": {"binary_data_size": 8}}]}).encode()  # fmt: skip
# (what, the request, the status): each refused with the protocol's {"error": ...}, never a 5xx. Built when run.
HOSTILE_V2: list[tuple[str, Callable[[], bytes], int]] = [
    ("BYTES element longer than its section",
     lambda: v2_binary(V2_ENCODE, "image", "BYTES", [1], struct.pack("<I", 1_000_000) + b"abcd"), 400),
    ("BYTES element length cut short", lambda: v2_binary(V2_ENCODE, "image", "BYTES", [1], b"\x01\x00"), 400),
    ("BYTES elements more than the shape",
     lambda: v2_binary(V2_ENCODE, "image", "BYTES", [1], (struct.pack("<I", 1) + b"a") * 2), 400),
    ("binary_data_size past the body", lambda: v2_binary(V2_GENERATE, "label", "INT64", [2], ONE, 16), 400),
    ("binary_data_size against the shape", lambda: v2_binary(V2_GENERATE, "label", "INT64", [2], ONE * 3), 400),
    ("binary_data_size negative", lambda: v2_binary(V2_GENERATE, "label", "INT64", [1], b"", -8), 400),
    ("bytes after the last section", lambda: v2_binary(V2_GENERATE, "label", "INT64", [1], ONE + b"extra", 8), 400),
    ("header length past the body", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, len(ONE_HEAD) + 100), 400),
    ("header length inside the JSON", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, 10), 400),
    ("header length zero", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, 0), 400),
    ("header length not a number", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, "abc"), 400),
    ("header length negative", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, -5), 400),
    ("header length in exponent form", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, "1e2"), 400),
    ("header length of 30 digits", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, "9" * 30), 400),
    ("header length empty", lambda: infer_bytes(V2_GENERATE, ONE_HEAD + ONE, ""), 400),
    ("shape and data disagree", lambda: v2_json(V2_GENERATE, [labels([3, 3, 3], [4])]), 400),
    ("two dimensions for a vector", lambda: v2_json(V2_GENERATE, [labels([3, 3], [1, 2])]), 400),
    ("negative shape", lambda: v2_json(V2_GENERATE, [labels([3], [-1])]), 400),
    ("huge shape", lambda: v2_json(V2_GENERATE, [labels([3], [2**62, 2**62])]), 400),
    ("shape beyond 64 bits", lambda: v2_json(V2_GENERATE, [labels([3], [10**30])]), 400),
    ("shape of 100 dimensions", lambda: v2_json(V2_GENERATE, [labels([3], [1] * 100)]), 400),
    ("shape that is a string", lambda: v2_json(V2_GENERATE, [labels([3], "1")]), 400),
    ("a million labels, over the body limit", lambda: v2_json(V2_GENERATE, [labels([3] * 1_000_000)]), 413),
    ("a million labels to encode", lambda: v2_json(V2_ENCODE, [picture(), labels([3] * 1_000_000)]), 400),
    ("a million labels in the shape only", lambda: v2_json(V2_GENERATE, [labels([3], [1_000_000])]), 400),
    ("a million binary labels", lambda: v2_binary(V2_GENERATE, "label", "INT64", [1_000_000], ONE * 1_000_000), 413),
    ("data nested 100,000 deep", lambda: infer_bytes(V2_GENERATE, b'{"inputs": [{"name": "label", "datatype": '
     b'"INT64", "shape": [1], "data": ' + deep(100_000) + b"}]}"), 400),
    ("data nested 20 deep", lambda: v2_json(V2_GENERATE, [labels(json.loads(deep(20)), [1])]), 400),
    ("a body nested 100,000 deep", lambda: infer_bytes(V2_ENCODE, deep(100_000)), 400),
    ("labels as FP32", lambda: v2_json(V2_GENERATE, [labels([3.0], datatype="FP32")]), 400),
    ("a datatype that does not exist", lambda: v2_json(V2_GENERATE, [labels([3], datatype="INT128")]), 400),
    ("a datatype that is a number", lambda: v2_json(V2_GENERATE, [labels([3], datatype=8)]), 400),
    ("INT64 data that are strings", lambda: v2_json(V2_GENERATE, [labels(["3"])]), 400),
    ("INT64 data out of range", lambda: v2_json(V2_GENERATE, [labels([2**70])]), 400),
    ("BYTES data that are numbers", lambda: v2_json(V2_ENCODE, [{**picture(), "data": [7]}]), 400),
    ("BYTES data with a lone surrogate", lambda: raw(V2_ENCODE, '{"inputs": [{"name": "image", "datatype": "BYTES", '
     '"shape": [1], "data": ["\\ud800"]}]}'), 400),
    ("latin-1 JSON", lambda: infer_bytes(V2_GENERATE, GOOD_JSON.replace("}}", ', "tag": "caf\u00e9"}}').encode(
     "latin-1")), 400),
    ("UTF-16 JSON", lambda: infer_bytes(V2_GENERATE, GOOD_JSON.encode("utf-16")), 400),
    ("JSON after a byte-order mark", lambda: infer_bytes(V2_GENERATE, b"\xef\xbb\xbf" + GOOD_JSON.encode()), 400),
    ("NaN in the latents", lambda: raw(V2_GENERATE, '{"inputs": [' + LABEL + ', {"name": "latent", "datatype": '
     '"FP32", "shape": [1, 4], "data": [NaN, 0, 0, 0]}]}'), 400),
    ("latents that overflow to infinity", lambda: raw(V2_GENERATE, '{"inputs": [' + LABEL + ', {"name": "latent", '
     '"datatype": "FP32", "shape": [1, 4], "data": [1e999, 0, 0, 0]}]}'), 400),
    ("a seed beyond 64 bits", lambda: v2_json(V2_GENERATE, [labels([3])], parameters={"seed": 10**30}), 400),
    ("a seed of 5,000 digits", lambda: raw(V2_GENERATE, '{"inputs": [' + LABEL + '], "parameters": {"seed": '
     + "9" * 5000 + "}}"), 400),
    ("a temperature of 1e999", lambda: raw(V2_GENERATE, '{"inputs": [' + LABEL + '], "parameters": {"temperature": '
     "1e999}}"), 400),
    ("a seed that is a string", lambda: v2_json(V2_GENERATE, [labels([3])], parameters={"seed": "1"}), 400),
    ("parameters nested", lambda: v2_json(V2_GENERATE, [labels([3])], parameters={"seed": {"value": 1}}), 400),
    ("a thousand parameters",
     lambda: v2_json(V2_GENERATE, [labels([3])], parameters={f"p{i}": i for i in range(1000)}), 400),
    ("a parameter of 3 MB", lambda: v2_json(V2_ENCODE, [picture()], parameters={"note": "x" * 3_000_000}), 400),
    ("an output's parameter of 3 MB", lambda: v2_json(V2_ENCODE, [picture()], outputs=[
     {"name": "mean", "parameters": {"note": "x" * 3_000_000}}]), 400),
    ("an id of 3 MB", lambda: v2_json(V2_ENCODE, [picture()], id="x" * 3_000_000), 400),
    ("a parameter of 3 MB to generate",
     lambda: v2_json(V2_GENERATE, [labels([3])], parameters={"note": "x" * 3_000_000}), 413),
    ("binary_data_output not a boolean",
     lambda: v2_json(V2_GENERATE, [labels([3])], parameters={"binary_data_output": 1}), 400),
    ("inputs not a list", lambda: v2_json(V2_GENERATE, {"label": [3]}), 400),
    ("no inputs", lambda: v2_json(V2_GENERATE, []), 400),
    ("an input twice", lambda: v2_json(V2_GENERATE, [labels([3]), labels([3])]), 400),
    ("a body that is a JSON string", lambda: infer_bytes(V2_GENERATE, b'"inputs"'), 400),
    ("an empty body", lambda: infer_bytes(V2_GENERATE, b""), 400),
]  # fmt: skip


def test_a_real_picture_makes_the_encode_cases_fail_only_for_their_fault(server):
    """The encode cases above carry one real picture: without their fault, the same request is answered 200."""
    answer = asyncio.run(ask(server.port, v2_json(V2_ENCODE, [picture()], parameters={"note": "x" * 1000})))
    assert answer is not None and answer.status == 200, answer and answer.body[:300]


@pytest.mark.parametrize(("request_", "status"), [(r, s) for _, r, s in HOSTILE_V2], ids=[w for w, _, _ in HOSTILE_V2])
def test_hostile_protocol_requests_are_a_clear_4xx_and_the_service_answers_on(server, request_, status):
    async def main():
        return await ask(server.port, request_(), timeout=30), await ask(server.port, GOOD_V2, timeout=30)

    answer, after = asyncio.run(main())
    assert answer is not None and answer.status == status, (answer and answer.status, answer and answer.body[:300])
    assert answer.headers["content-type"] == "application/json" and len(answer.body) < 1000, answer.body[:300]
    error = json.loads(answer.body)
    assert list(error) == ["error"] and isinstance(error["error"], str) and error["error"], error
    assert after is not None and after.status == 200, after and after.body[:300]


def test_memory_stays_flat_over_bursts_of_hostile_multi_megabyte_protocol_bodies(server):
    """Infer bodies of up to 4 MB (the upload limit) that fail: a million labels to digits-encode, a binary BYTES
    element claiming more than its section, data nested a million deep, a string parameter of megabytes, a
    generate body over its limit. After a first burst, further bursts leave the server's memory where it was and
    /livez stays prompt; each is refused with the protocol's error."""
    bodies = [
        v2_json(V2_ENCODE, [picture(), labels([3] * 1_200_000)]),
        v2_binary(V2_ENCODE, "image", "BYTES", [1], struct.pack("<I", 2**32 - 1) + os.urandom(3_900_000)),
        infer_bytes(V2_ENCODE, b'{"inputs": [{"name": "image", "data": ' + deep(1_900_000) + b"}]}"),
        v2_json(V2_ENCODE, [picture()], parameters={"note": "x" * 3_900_000}),
        v2_json(V2_GENERATE, [labels([3] * 1_000_000)]),
    ]
    expected = [400, 400, 400, 400, 413]

    first, later, before, after, livez = bursts(server, bodies, timeout=60)
    for answers in [first, *later]:
        assert [a.status for a in answers] == expected * 12, [a and a.status for a in answers]
        assert all(a.headers["content-type"] == "application/json" and len(a.body) < 1000 for a in answers)
    assert after - before < 40, f"the server grew from {before:.0f} to {after:.0f} MiB"
    assert max(livez) < BODY_TIMEOUT_S, max(livez)
    print(
        f"\nserver memory over 3 bursts of 60 hostile /v2 bodies: {before:.0f} -> {after:.0f} MiB; "
        f"/livez meanwhile at most {max(livez) * 1000:.0f} ms"
    )
