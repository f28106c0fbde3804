"""Serving throughput and latency: the service against a floor and a straightforward design, side by side.

    python -m tests.bench.serve [--model-dir DIR] [--duration S] [--connections 1,16] [--rounds N]
        [--env CVAE_X=V ...] [--variant NAME[@CHECKOUT]:CVAE_X=V,... ...]

Starts uvicorn processes on 127.0.0.1, all run alike (app.__main__.uvicorn_config, one worker, access log off): the
service (`python -m app`), the floor and floor-asgi (tests/bench/apps.py: the same request parsing and validation,
through FastAPI's routes or through the service's fast path, then a constant answer, no model) and the
straightforward design (per request: sample, decode alone, Pillow PNG; decode and score an upload alone; no
batching).
Each is driven in turn with the same closed-loop HTTP load, the order rotating every round, so that a noisy
machine slows all of them alike; prints requests/s, p50 and p99 of every run, then the medians over rounds and
each contender's throughput as a fraction of the floor's in the same round. /generate gets {"digit": 3, "n": 8};
/encode gets a 28x28 MNIST digit as a multipart upload (without `digit`: the digit is inferred).

Load comes from wrk (with a Lua script) when it is installed, else from a small asyncio HTTP/1.1 client here;
the output says which. Also reports cold start (process start to /readyz 200) and, from the service's /metrics,
the requests per batch and queue wait of its runs, and the CPU each server used per request (with its children:
the inference process). --variant adds services with other settings, or run from another checkout (e.g. the
commit before a change), to the same rotation. Only 127.0.0.1 is ever contacted; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tests.bench.apps import mnist_digits

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
REFERENCES = ("floor", "floor-asgi", "straightforward")
GENERATE_BODY = b'{"digit": 3, "n": 8}'
BOUNDARY = "cvaebenchboundary7d3f"
READY_TIMEOUT_S = 180.0


# --- servers --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    cold_start_s: float = 0.0


def start(name: str, args: list[str], env: dict[str, str], port: int, logs: Path, cwd: Path = ROOT) -> Server:
    """Start a server process and wait for its /readyz 200; cold start is counted from just before Popen."""
    log = logs / f"{name}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, port, proc, log)
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if get(port, "/readyz", timeout=1.0)[0] == 200:
                server.cold_start_s = time.monotonic() - started
                return server
        time.sleep(0.01)
    stop(server)
    raise SystemExit(f"{name} not ready after {READY_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


@dataclass(frozen=True)
class Variant:
    """A service to measure: `python -m app` from `checkout` with these CVAE_* settings."""

    name: str
    env: dict[str, str]
    checkout: Path = ROOT

    @classmethod
    def parse(cls, text: str) -> Variant:
        """NAME[@CHECKOUT]:CVAE_X=V,CVAE_Y=W (settings optional)."""
        head, _, settings = text.partition(":")
        name, _, checkout = head.partition("@")
        env = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
        return cls(name, env, Path(checkout).resolve() if checkout else ROOT)


@contextlib.contextmanager
def servers(
    model_dir: Path, variants: list[Variant], logs: Path, straightforward_threads: int = 0
) -> Iterator[dict[str, Server]]:
    running: dict[str, Server] = {}
    quiet = {"CVAE_ACCESS_LOG": "false", "CVAE_LOG_LEVEL": "warning"}
    try:
        for v in variants:  # one after the other, so that cold starts do not overlap
            port = free_port()
            env = {**quiet, "PYTHONPATH": str(v.checkout), "CVAE_MODEL_DIR": str(model_dir), **v.env}
            running[v.name] = start(v.name, ["-m", "app", "--port", str(port)], env, port, logs, v.checkout)
        for name in REFERENCES:
            port = free_port()
            args = ["-m", "tests.bench.apps", name, "--port", str(port), "--model-dir", str(model_dir),
                    "--torch-threads", str(straightforward_threads)]  # fmt: skip
            running[name] = start(name, args, {**quiet, "PYTHONPATH": str(ROOT)}, port, logs)
        yield running
    finally:
        for server in running.values():
            stop(server)


# --- requests -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    path: str
    content_type: str
    body: bytes
    expect: str  # the content type of a good answer
    headers: tuple[tuple[str, str], ...] = ()  # sent besides Content-Type


def mnist_png() -> bytes:
    """The test fixture's first digit (a 28x28 MNIST 1) as a PNG: the upload every /encode workload sends."""
    buf = io.BytesIO()
    Image.fromarray(mnist_digits(1)[0].numpy()).save(buf, format="PNG")
    return buf.getvalue()


def encode_workload() -> Workload:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + mnist_png()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return Workload("/encode", f"multipart/form-data; boundary={BOUNDARY}", body, "application/json")


WORKLOADS = {
    "generate": lambda: Workload("/generate", "application/json", GENERATE_BODY, "image/png"),
    "encode": encode_workload,
}


def check(server: Server, w: Workload) -> None:
    """One request answered 200 with the expected content type, or stop: a benchmark of errors means nothing."""
    headers = {"Content-Type": w.content_type, **dict(w.headers)}
    req = urllib.request.Request(f"http://{HOST}:{server.port}{w.path}", data=w.body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, kind = r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, kind = e.code, e.read().decode(errors="replace")
    if status != 200 or not kind.startswith(w.expect):
        raise SystemExit(f"{server.name} {w.path}: {status} {kind}")


# --- load generators ------------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


WRK_SCRIPT = """\
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %.1f %.1f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


class Wrk:
    name = "wrk"

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe = exe
        self.workdir = workdir
        self.scripts: dict[Workload, Path] = {}

    def _script(self, w: Workload) -> Path:
        if w not in self.scripts:
            body = self.workdir / f"body{len(self.scripts)}.bin"
            body.write_bytes(w.body)
            script = self.workdir / f"load{len(self.scripts)}.lua"
            headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in w.headers)
            script.write_text(WRK_SCRIPT.format(body=body, content_type=w.content_type, headers=headers))
            self.scripts[w] = script
        return self.scripts[w]

    def run(self, port: int, w: Workload, connections: int, duration: float) -> Result:
        cmd = [self.exe, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s", "--latency",
               "-s", str(self._script(w)), f"http://{HOST}:{port}{w.path}"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False).stdout
        m = re.search(r"^BENCH (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)$", out, re.MULTILINE)
        if m is None:
            raise SystemExit(f"could not read wrk's output:\n{out}")
        requests, micros, p50, p99, errors = m.groups()
        return Result(int(requests), int(micros) / 1e6, float(p50) / 1000, float(p99) / 1000, int(errors))


class PythonClient:
    """Closed-loop keep-alive HTTP/1.1 over asyncio streams: each connection sends its next request as soon as
    the previous answer is read. Costs far more CPU per request than wrk, on the machine being measured."""

    name = "python asyncio client (wrk not found)"

    def run(self, port: int, w: Workload, connections: int, duration: float) -> Result:
        return asyncio.run(self._run(port, w, connections, duration))

    async def _run(self, port: int, w: Workload, connections: int, duration: float) -> Result:
        headers = "".join(f"{k}: {v}\r\n" for k, v in w.headers)
        request = (
            f"POST {w.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {w.content_type}\r\n{headers}"
            f"Content-Length: {len(w.body)}\r\n\r\n".encode()
            + w.body
        )
        latencies: list[float] = []
        errors = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
            if m is None:
                raise ConnectionError("answer without Content-Length")
            await reader.readexactly(int(m.group(1)))
            latencies.append(time.perf_counter() - t0)
            return head.startswith(b"HTTP/1.1 200")

        async def connection() -> None:
            nonlocal errors
            while loop.time() < deadline:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
                except (OSError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                try:
                    while loop.time() < deadline:
                        if not await asyncio.wait_for(one(reader, writer), 5):
                            errors += 1
                except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    errors += 1
                finally:
                    writer.close()

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(connections)))
        seconds = time.perf_counter() - started
        if not latencies:
            return Result(0, seconds, float("nan"), float("nan"), errors)
        qs = statistics.quantiles(latencies, n=100, method="inclusive")
        return Result(len(latencies), seconds, qs[49] * 1000, qs[98] * 1000, errors)


# --- the service's own account: batch sizes and queue wait ------------------------------------------------------


BATCH_SERIES = {
    "cvae_batch_size_requests": "requests",
    "cvae_batch_queue_wait_seconds": "wait",
    "cvae_inference_duration_seconds": "run",
}


def batch_metrics(port: int, operation: str) -> dict[str, float]:
    """The _sum and _count of the service's batch histograms for one operation (generate, encode), as
    {"requests_sum": ..., "wait_count": ...}."""
    values: dict[str, float] = {}
    label = f'{{operation="{operation}"}}'
    for line in get(port, "/metrics")[1].decode().splitlines():
        name, _, value = line.rpartition(" ")
        if not name.endswith(label):
            continue
        for suffix in ("_sum", "_count"):
            series = name.removesuffix(label)
            if series.endswith(suffix) and series.removesuffix(suffix) in BATCH_SERIES:
                values[BATCH_SERIES[series.removesuffix(suffix)] + suffix] = float(value)
    return values


def batch_summary(before: dict[str, float], after: dict[str, float]) -> str:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("requests_count")
    if batches <= 0:
        return ""
    wait_ms = 1000 * delta("wait_sum") / max(1.0, delta("wait_count"))
    run_ms = 1000 * delta("run_sum") / batches
    per_batch = delta("requests_sum") / batches
    return f"  [{per_batch:.1f} requests/batch, queue wait {wait_ms:.2f} ms, batch {run_ms:.2f} ms]"


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class Table:
    rows: dict[tuple[str, int, str], list[Result]] = field(default_factory=dict)
    ratios: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)
    ratios_asgi: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)  # to floor-asgi


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds so far of a process, and of it with its children (Linux; zeros elsewhere)."""
    own = total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        own, total = (seconds if p == pid else own), total + seconds
    return own, total


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for t in tasks:
        with contextlib.suppress(OSError):
            kids += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return kids + [g for k in kids for g in _children(k)]


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--connections", default="1,16", help="comma-separated connection counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of untimed load per contender first")
    parser.add_argument("--endpoints", default="generate,encode", help="comma-separated: generate, encode")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--straightforward-threads", type=int, default=0,
        help="torch threads of the straightforward app (default 0: torch's default, as a straightforward app has)",
    )  # fmt: skip
    parser.add_argument(
        "--env", action="append", default=[], metavar="CVAE_X=V", help="a setting for the service (repeatable)"
    )
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME[@CHECKOUT]:CVAE_X=V,...",
        help="also measure the service with other settings, or from another checkout (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    endpoints = [e.strip() for e in args.endpoints.split(",")]
    if not (args.model_dir / "manifest.json").is_file():
        raise SystemExit(f"no model directory at {args.model_dir} (give --model-dir)")
    service_env = dict(kv.split("=", 1) for kv in args.env)
    settings = {k: v for k, v in os.environ.items() if k.startswith("CVAE_")} | service_env
    variants = [Variant("service", service_env), *(Variant.parse(v) for v in args.variant)]
    contenders = ["floor", "floor-asgi", *(v.name for v in variants), "straightforward"]
    if len(set(contenders)) < len(contenders):
        raise SystemExit(
            "variant names must differ from each other and from floor, floor-asgi, service, straightforward"
        )

    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp:
        workdir = Path(tmp)
        exe = shutil.which("wrk")
        if args.client == "wrk" and exe is None:
            raise SystemExit("wrk not found")
        client: Wrk | PythonClient = Wrk(exe, workdir) if exe and args.client != "python" else PythonClient()
        print(f"load: {client.name}; {args.duration:g} s per run, {args.rounds} rounds, connections {connections}")
        print(f"model: {args.model_dir}; service settings: {settings or 'defaults'}; straightforward torch threads: "
              f"{args.straightforward_threads or 'default'}")  # fmt: skip
        for v in variants[1:]:
            print(f"variant {v.name}: settings {v.env or 'defaults'} from {v.checkout}")
        print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()} (1, 5, 15 min)")
        with servers(args.model_dir, variants, workdir, args.straightforward_threads) as running:
            print("cold start (process start to /readyz 200): "
                  + ", ".join(f"{n} {s.cold_start_s:.2f} s" for n, s in running.items()))  # fmt: skip
            table = Table()
            for endpoint in endpoints:
                w = WORKLOADS[endpoint]()
                for server in running.values():
                    check(server, w)
                for server in running.values():  # warm-up: untimed
                    client.run(server.port, w, max(connections), args.warm_up)
                for r in range(args.rounds):
                    for c in connections:
                        shift = (r + connections.index(c)) % len(contenders)
                        order = contenders[shift:] + contenders[:shift]
                        results: dict[str, Result] = {}
                        for name in order:
                            port = running[name].port
                            is_service = name not in REFERENCES
                            before = batch_metrics(port, endpoint) if is_service else {}
                            cpu0 = cpu_seconds(running[name].proc.pid)
                            results[name] = res = client.run(port, w, c, args.duration)
                            cpu1 = cpu_seconds(running[name].proc.pid)
                            own, total = (1e6 * (b - a) / max(1, res.requests) for a, b in zip(cpu0, cpu1, strict=True))
                            cpu = f"{own:5.0f}" + (f" (+children {total - own:.0f})" if total > own else "")
                            extra = batch_summary(before, batch_metrics(port, endpoint)) if is_service else ""
                            table.rows.setdefault((endpoint, c, name), []).append(res)
                            print(f"  round {r + 1} {w.path:9s} c={c:<3d} {name:15s} {res.rps:8.0f} rps  "
                                  f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  errors {res.errors}  "
                                  f"cpu {cpu} us/req{extra}",
                                  flush=True)  # fmt: skip
                        for name in contenders:
                            for floor, ratios in (("floor", table.ratios), ("floor-asgi", table.ratios_asgi)):
                                rps = results[floor].rps
                                ratios.setdefault((endpoint, c, name), []).append(
                                    results[name].rps / rps if rps else float("nan")
                                )
                    print(f"  (load average {load_avg()})", flush=True)
            print_table(table, endpoints, connections, contenders, running)
        print(f"load average at the end: {load_avg()}")


def print_table(
    table: Table, endpoints: list[str], connections: list[int], contenders: list[str], running: dict[str, Server]
) -> None:
    print()
    print("medians over rounds; ratio = rps / the floor's rps in the same round (median of the rounds' ratios);")
    print("/asgi = the same against floor-asgi, the floor built like the service's fast path")
    header = f"{'endpoint':10s} {'contender':15s} {'conn':>4s} {'rps':>8s} {'p50 ms':>8s} {'p99 ms':>8s} " \
             f"{'errors':>6s} {'ratio':>6s} {'/asgi':>6s}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for endpoint in endpoints:
        for c in connections:
            for name in contenders:
                results = table.rows[(endpoint, c, name)]
                print(
                    f"/{endpoint:9s} {name:15s} {c:4d} {statistics.median(r.rps for r in results):8.0f} "
                    f"{statistics.median(r.p50_ms for r in results):8.2f} "
                    f"{statistics.median(r.p99_ms for r in results):8.2f} {sum(r.errors for r in results):6d} "
                    f"{statistics.median(table.ratios[(endpoint, c, name)]):6.2f} "
                    f"{statistics.median(table.ratios_asgi[(endpoint, c, name)]):6.2f}"
                )
    print("cold start: " + ", ".join(f"{n} {s.cold_start_s:.2f} s" for n, s in running.items()))


if __name__ == "__main__":
    main()
