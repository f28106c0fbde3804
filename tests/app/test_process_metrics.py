"""The inference process in /metrics (app/telemetry/process.py): its memory, CPU seconds, start time and restarts,
read from /proc, counted across a SIGKILL, absent in thread mode, and valid for `promtool check metrics`; and
cvae_ready, which follows /readyz (0 while the inference process restarts and while draining)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from app.factory import create_app
from app.settings import Settings
from app.telemetry.process import InferenceProcessCollector
from tests.conftest import metric, wait_for
from tests.system.prometheus_tools import binary

P = "cvae_inference_process_"
M = {"model": "m"}  # the fake engines' model label


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_inference_process_memory_cpu_and_start_are_its_own(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        pid = c.app.state.service.runtime.engine.pid
        assert pid != os.getpid()
        for seed in range(20):  # CPU time in the child, not here
            assert c.post("/generate", json={"digit": 3, "n": 64, "seed": seed}).status_code == 200
        rss = metric(c, P + 'resident_memory_bytes{model="digits"}')
        assert abs(rss - rss_of(pid)) < 0.1 * rss  # the child's (a few MB apart: it moves between the two reads)
        assert rss != metric(c, "process_resident_memory_bytes")
        assert metric(c, P + 'virtual_memory_bytes{model="digits"}') > rss
        assert metric(c, P + 'cpu_seconds_total{model="digits"}') > 0
        assert time.time() - 120 < metric(c, P + 'start_time_seconds{model="digits"}') <= time.time()
        assert metric(c, P + 'restarts_total{model="digits"}') == 0


def test_a_sigkilled_inference_process_counts_one_restart_and_is_not_ready_meanwhile(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        engine = c.app.state.service.runtime.engine
        first, started = engine.pid, metric(c, P + 'start_time_seconds{model="digits"}')
        time.sleep(0.05)  # start times are in clock ticks (1/100 s)
        assert metric(c, "cvae_ready") == 1
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: metric(c, "cvae_ready") == 0, 10)  # as /readyz: 503 while restarting
        wait_for(lambda: metric(c, "cvae_ready") == 1, 30)
        assert engine.pid != first and c.get("/readyz").status_code == 200
        assert metric(c, P + 'restarts_total{model="digits"}') == 1
        assert metric(c, P + 'start_time_seconds{model="digits"}') > started  # the figures are the new process's
        rss = rss_of(engine.pid)
        assert abs(metric(c, P + 'resident_memory_bytes{model="digits"}') - rss) < 0.1 * rss
        assert c.post("/generate", json={"digit": 1}).status_code == 200


def test_thread_mode_has_no_inference_process_series(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir, inference_process=False))) as c:
        assert c.post("/generate", json={"digit": 1}).status_code == 200
        assert P not in c.get("/metrics").text


class FakeEngine:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.restarts = 2


def fake_proc(root: Path, pid: int, command: str, status: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    # pid (comm) state ppid ... utime=1500 stime=500 ... starttime=12345 vsize=987654321 (proc(5) fields 14, 15, 22, 23)
    fields = ["S", *["0"] * 10, "1500", "500", *["0"] * 6, "12345", "987654321", "42"]
    (root / str(pid) / "stat").write_text(f"{pid} ({command}) {' '.join(fields)}\n")
    (root / str(pid) / "status").write_text(status)


def test_stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses(tmp_path: Path):
    fake_proc(tmp_path, 7, "py ) 1 2 (x", "Name:\tpy\nVmRSS:\t  2048 kB\nThreads:\t3\n")
    registry = CollectorRegistry()
    InferenceProcessCollector("t", registry, proc=str(tmp_path)).watch("m", FakeEngine(7))
    ticks = os.sysconf("SC_CLK_TCK")
    assert registry.get_sample_value("t_inference_process_cpu_seconds_total", M) == 2000 / ticks
    assert registry.get_sample_value("t_inference_process_resident_memory_bytes", M) == 2048 * 1024
    assert registry.get_sample_value("t_inference_process_virtual_memory_bytes", M) == 987654321
    assert registry.get_sample_value("t_inference_process_start_time_seconds", M) == 1700000000 + 12345 / ticks
    assert registry.get_sample_value("t_inference_process_restarts_total", M) == 2


def test_a_dead_or_zombie_process_leaves_only_what_can_be_read(tmp_path: Path):
    fake_proc(tmp_path, 8, "python", "Name:\tpython\nState:\tZ (zombie)\n")  # a zombie's status has no VmRSS
    registry = CollectorRegistry()
    collector = InferenceProcessCollector("t", registry, proc=str(tmp_path))
    assert generate_latest(registry) == b""  # not watching yet
    collector.watch("m", FakeEngine(8))
    assert registry.get_sample_value("t_inference_process_resident_memory_bytes", M) is None
    assert registry.get_sample_value("t_inference_process_cpu_seconds_total", M) is not None
    collector.watch("m", FakeEngine(9))  # no such process
    assert registry.get_sample_value("t_inference_process_cpu_seconds_total", M) is None
    assert registry.get_sample_value("t_inference_process_restarts_total", M) == 2


def test_metrics_with_the_inference_process_pass_promtool_check_metrics(client):
    promtool = binary("promtool")
    client.post("/generate", json={"digit": [3, 4], "n": 5})
    text = client.get("/metrics").content
    assert P.encode() + b'restarts_total{model="digits"} 0.0' in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_cvae_ready_says_what_readyz_says_while_draining(client):
    assert metric(client, "cvae_ready") == 1 and client.get("/readyz").status_code == 200
    client.app.state.service.draining = True  # as a SIGTERM sets it
    try:
        assert metric(client, "cvae_ready") == 0 and client.get("/readyz").status_code == 503
    finally:
        client.app.state.service.draining = False
    assert metric(client, "cvae_ready") == 1
