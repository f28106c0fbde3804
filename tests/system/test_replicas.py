"""Two replicas (`python -m app`, the shipped model) behind Debian's nginx with the project's load-balancer
configuration (deploy/nginx, as `docker compose --profile scale` runs it), all on loopback.

Skips where nginx is not installed, unless CVAE_REQUIRE_NGINX=1 (as .ci/run sets it): then it fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_ready
from tests.system.nginx_lb import ROOT, nginx_binary, nginx_in_front

GENERATE_BODY = json.dumps({"digit": 3, "n": 8}).encode()
SHUTDOWN_DELAY_S = 1.5  # the leaving replica's CVAE_SHUTDOWN_DELAY_S

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_nginx() -> None:
    if nginx_binary() is None:
        if os.environ.get("CVAE_REQUIRE_NGINX") == "1":
            pytest.fail("CVAE_REQUIRE_NGINX=1 but nginx is not installed (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx); CVAE_REQUIRE_NGINX=1 makes this a failure")


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def replicas_behind_nginx(tmp_path: Path, count: int = 2) -> Iterator[tuple[list[Replica], int, Path]]:
    """`count` replicas of the service (`python -m app`, the shipped model) and nginx in front of them
    -> (replicas, nginx's port, its access log: complete once the block has ended)."""
    env = {**os.environ, "CVAE_SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_S), "CVAE_ACCESS_LOG": "false",
           "CVAE_LOG_LEVEL": "warning"}  # fmt: skip
    replicas: list[Replica] = []
    try:
        for i in range(count):
            port, log = free_port(), tmp_path / f"replica-{i}.log"
            with open(log, "wb") as out:
                cmd = [sys.executable, "-m", "app", "--port", str(port)]
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            replicas.append(Replica(port, proc, log))
        for r in replicas:
            wait_ready(r.port, r.proc, lambda r=r: r.log.read_text()[-3000:], timeout_s=120)
        lb_port = free_port()
        with nginx_in_front([r.address for r in replicas], lb_port, tmp_path / "nginx") as access_log:
            yield replicas, lb_port, access_log
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(10)


@dataclass
class Load:
    """Client threads POSTing /generate to one port over keep-alive connections until stopped."""

    port: int
    threads: int = 6
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set():
            try:
                conn.request("POST", "/generate", GENERATE_BODY, headers)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and body.startswith(b"\x89PNG")
                outcome = None if ok else f"{response.status} {body[:200]!r}"
            except (OSError, http.client.HTTPException) as e:
                outcome = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self._lock:
                if outcome is None:
                    self.statuses[200] += 1
                else:
                    self.failures.append(outcome)
        conn.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        workers = [threading.Thread(target=self._client, daemon=True) for _ in range(self.threads)]
        for w in workers:
            w.start()
        try:
            yield self
        finally:
            self.stop.set()
            for w in workers:
                w.join(60)

    def answered(self) -> int:
        with self._lock:
            return self.statuses[200] + len(self.failures)


def served_by(access_log: Path, path: str) -> list[tuple[float, str]]:
    """(time, the replica that answered) of each request for `path`, from nginx's access log: the last address of
    $upstream_addr (earlier ones, if any, were tried first and failed)."""
    rows = []
    for line in access_log.read_text().splitlines():
        fields = line.split(" ")
        if f'"POST {path} HTTP/1.1"' not in line:
            continue
        upstream = line.split("upstream=", 1)[1].split(" upstream_status=", 1)[0]
        rows.append((float(fields[0]), upstream.split(", ")[-1]))
    return rows


def test_a_replica_leaving_under_load_costs_no_request_and_both_replicas_serve(tmp_path):
    with replicas_behind_nginx(tmp_path) as (replicas, lb_port, access_log):
        leaving, staying = replicas
        with Load(lb_port).running() as load:
            deadline = time.monotonic() + 30
            while load.answered() < 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            sigterm_at = time.time()
            leaving.proc.send_signal(signal.SIGTERM)
            code = leaving.proc.wait(30)
            exited_at = time.time()
            time.sleep(1.5)  # the staying replica alone, after the other one is gone
        assert code == 0, leaving.log.read_text()[-3000:]
        assert "Traceback" not in leaving.log.read_text()

        assert load.failures == [], f"{len(load.failures)} failed of {load.answered()}: {load.failures[:5]}"
        assert exited_at - sigterm_at >= SHUTDOWN_DELAY_S  # it kept its port open for the balancer's sake

    served = served_by(access_log, "/generate")
    assert len(served) == load.statuses[200]  # every answer the clients saw is in the log
    by_replica = Counter(addr for _, addr in served)
    assert by_replica[leaving.address] > 0 and by_replica[staying.address] > 0, by_replica
    # The leaving replica served during its shutdown delay; afterwards only the other one did.
    assert any(sigterm_at < t < sigterm_at + SHUTDOWN_DELAY_S for t, a in served if a == leaving.address)
    after = [a for t, a in served if t > exited_at]
    assert after and set(after) == {staying.address}


def test_the_balancers_own_errors_are_problem_json(tmp_path):
    with replicas_behind_nginx(tmp_path, count=1) as ([replica], lb_port, _):
        conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=30)
        limit = 4 * 1024 * 1024  # render.py's default, the service's CVAE_MAX_UPLOAD_BYTES default
        conn.request("POST", "/encode", b"\0" * (limit + 1), {"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 413 and response.getheader("Content-Type") == "application/problem+json"
        assert body["status"] == 413 and body["type"].endswith("/body-too-large") and str(limit) in body["detail"]
        conn.close()

        replica.proc.send_signal(signal.SIGTERM)
        replica.proc.wait(30)
        status, raw = get(lb_port, "/readyz")
        body = json.loads(raw)
        assert status == 502 and body["status"] == 502 and body["type"].endswith("/no-replica"), body
