"""Reloads of the real service (`python -m app` on 127.0.0.1, SIGHUP): under continuous load on both endpoints every
request is answered 200 by the model /model named when it was admitted, and the access log names it too; after 20
reloads the server's resident memory is what it was after the first, and one inference process is left.
Marked slow: `bash tests/run.sh -m slow -k reload`."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import drawing, encoded, make_model_dir, wait_for
from tests.system.test_hostile import SETTINGS, read_answer, request_bytes, serving

pytestmark = pytest.mark.slow

GENERATE_CONNECTIONS = 16
ENCODE_CONNECTIONS = 16
BOUNDARY = "reload-test-boundary"


@dataclass
class Timed:
    status: int
    model_id: str
    request_id: str
    started: float
    ended: float


def encode_request(png: bytes) -> bytes:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip
    return request_bytes("POST", "/encode", body, content_type=f"multipart/form-data; boundary={BOUNDARY}")


def point(link: Path, target: Path) -> None:
    new = link.with_name(link.name + ".new")
    new.symlink_to(target)
    new.replace(link)


def model_id(base: str) -> str:
    return httpx.get(f"{base}/model", timeout=5).json()["id"]


def p99(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=100)[98] if len(seconds) >= 2 else max(seconds, default=0.0)


def test_a_reload_under_continuous_load_answers_every_request_200_from_the_model_that_admitted_it(tmp_path):
    a, b = make_model_dir(tmp_path / "a", seed=20), make_model_dir(tmp_path / "b", seed=21)
    link = tmp_path / "current"
    link.symlink_to(a)
    log = tmp_path / "server.log"
    with serving(link, log, {**SETTINGS, "CVAE_LOG_FORMAT": "json"}) as s:
        id_a = model_id(s.base)
        generate = request_bytes("POST", "/generate", b'{"digit": [3, 8], "n": 2, "seed": 1}')
        encode = encode_request(encoded(drawing()))
        marks: dict[str, float] = {}

        async def keep_asking(raw: bytes, stop: asyncio.Event) -> list[Timed]:
            answers = []
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            try:
                while not stop.is_set():
                    started = time.perf_counter()
                    writer.write(raw)
                    answer = await read_answer(reader, started, timeout=30)
                    assert answer is not None, "the server closed a kept-alive connection"
                    answers.append(Timed(answer.status, answer.headers.get("x-model-id", ""),
                                         answer.headers["x-request-id"], started, time.perf_counter()))  # fmt: skip
            finally:
                writer.close()
            return answers

        async def main() -> list[Timed]:
            stop = asyncio.Event()
            clients = [asyncio.ensure_future(keep_asking(generate, stop)) for _ in range(GENERATE_CONNECTIONS)]
            clients += [asyncio.ensure_future(keep_asking(encode, stop)) for _ in range(ENCODE_CONNECTIONS)]
            await asyncio.sleep(1.5)
            point(link, b)
            marks["hup"] = time.perf_counter()
            s.proc.send_signal(signal.SIGHUP)
            async with httpx.AsyncClient(base_url=s.base, timeout=5) as http:
                while (await http.get("/model")).json()["id"] == id_a:
                    assert time.perf_counter() - marks["hup"] < 60, "no switch within 60 s"
                    await asyncio.sleep(0.02)
            marks["switched"] = time.perf_counter()
            await asyncio.sleep(1.5)
            stop.set()
            return [t for answers in await asyncio.gather(*clients) for t in answers]

        answers = asyncio.run(main())
        id_b = model_id(s.base)
        assert s.metric('cvae_reloads_total{model="digits",outcome="reloaded"}') == 1
    assert id_a != id_b
    assert {t.status for t in answers} == {200}, sorted({t.status for t in answers})
    assert {t.model_id for t in answers} == {id_a, id_b}
    assert all(t.model_id == id_a for t in answers if t.ended < marks["hup"])
    assert all(t.model_id == id_b for t in answers if t.started > marks["switched"] + 0.1)
    # The access log names the model of each answer, as its X-Model-Id did.
    logged = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["logger"] == "uvicorn.access" and entry.get("path") in ("/generate", "/encode"):
            logged[entry["request_id"]] = entry["model_id"]
    assert all(logged[t.request_id] == t.model_id for t in answers)
    text = log.read_text()
    assert "Traceback" not in text and "reload refused" not in text
    before = [t.ended - t.started for t in answers if t.ended < marks["hup"]]
    during = [t.ended - t.started for t in answers if marks["hup"] <= t.started <= marks["switched"] + 0.5]
    print(
        f"\nreload under load ({GENERATE_CONNECTIONS} /generate and {ENCODE_CONNECTIONS} /encode connections): "
        f"{len(answers)} answers, all 200; switch {marks['switched'] - marks['hup']:.1f} s after SIGHUP; "
        f"p99 {p99(before) * 1000:.0f} ms before it, {p99(during) * 1000:.0f} ms during it ({len(during)} answers)"
    )


def children(pid: int) -> list[int]:
    """The live child processes of pid, whichever of its threads started them."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_after_20_reloads_resident_memory_is_what_it_was_after_the_first(tmp_path):
    models = [make_model_dir(tmp_path / "a", seed=30), make_model_dir(tmp_path / "b", seed=31)]
    link = tmp_path / "current"
    link.symlink_to(models[0])
    with serving(link, tmp_path / "server.log", {**SETTINGS, "CVAE_ACCESS_LOG": "false"}) as s:
        rss = []
        for i in range(1, 21):
            point(link, models[i % 2])
            s.proc.send_signal(signal.SIGHUP)
            wait_for(lambda i=i: s.metric('cvae_reloads_total{model="digits",outcome="reloaded"}') == i, timeout_s=120)
            for _ in range(10):  # some work on the new model before measuring
                r = httpx.post(f"{s.base}/generate", json={"digit": [0, 1, 2], "n": 4, "seed": i}, timeout=10)
                assert r.status_code == 200
            rss.append(s.rss_mib())
        left = children(s.proc.pid)
        assert s.metric('cvae_reloads_total{model="digits",outcome="refused"}') == 0
    print(f"\nserver RSS after reload 1: {rss[0]:.1f} MiB, after 20: {rss[-1]:.1f} MiB (max {max(rss):.1f})")
    assert len(left) == 1, left  # the serving inference process; every replaced one has exited
    assert rss[-1] - rss[0] < 8, rss
