"""Scaling out on one machine: one replica against two, behind nginx with the project's load-balancer configuration.

    python -m tests.bench.replicas [--model-dir DIR] [--duration S] [--connections 16] [--rounds N]

Starts two replicas (`python -m app`, access log off) and two nginx (deploy/nginx, as `docker compose --profile
scale` runs it: tests/system/nginx_lb.py) on 127.0.0.1: one in front of replica A alone, one in front of A and B. Drives
A directly, nginx with one replica and nginx with two in turn with the same closed-loop load (wrk when installed,
else tests/bench/serve.py's Python client), the order rotating every round, and prints requests/s, p50 and p99 of
POST /generate {"digit": 3, "n": 8} for each, with their medians over rounds; also each replica's cold start (process
start to /readyz 200). A replica that is not addressed sits idle, so it costs the others nothing. Only 127.0.0.1 is
ever contacted; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from tests.bench.serve import (
    GENERATE_BODY,
    ROOT,
    PythonClient,
    Result,
    Server,
    Workload,
    Wrk,
    check,
    free_port,
    load_avg,
    start,
    stop,
)
from tests.system.nginx_lb import nginx_binary, nginx_in_front

CONTENDERS = ("direct, 1 replica", "nginx, 1 replica", "nginx, 2 replicas")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--connections", default="16", help="comma-separated connection counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of untimed load per contender first")
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    if not (args.model_dir / "manifest.json").is_file():
        raise SystemExit(f"no model directory at {args.model_dir} (give --model-dir)")
    if nginx_binary() is None:
        raise SystemExit("nginx not found (apt-get install nginx)")

    with tempfile.TemporaryDirectory(prefix="cvae-bench-replicas-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        exe = shutil.which("wrk")
        client: Wrk | PythonClient = Wrk(exe, workdir) if exe else PythonClient()
        print(f"load: {client.name}; {args.duration:g} s per run, {args.rounds} rounds, connections {connections}")
        print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()} (1, 5, 15 min)")
        env = {"CVAE_ACCESS_LOG": "false", "CVAE_LOG_LEVEL": "warning", "CVAE_MODEL_DIR": str(args.model_dir)}
        replicas: list[Server] = []
        stack.callback(lambda: [stop(r) for r in replicas])
        for name in ("A", "B"):  # one after the other, so that cold starts do not overlap
            port = free_port()
            replicas.append(start(f"replica-{name}", ["-m", "app", "--port", str(port)], env, port, workdir))
        a, b = replicas
        print("cold start (process start to /readyz 200): " + ", ".join(f"{r.cold_start_s:.2f} s" for r in replicas))
        ports = {CONTENDERS[0]: a.port}
        for name, upstreams in ((CONTENDERS[1], [a]), (CONTENDERS[2], [a, b])):
            ports[name] = port = free_port()
            addresses = [f"127.0.0.1:{r.port}" for r in upstreams]
            stack.enter_context(nginx_in_front(addresses, port, workdir / name.replace(", ", "-").replace(" ", "-")))

        w = Workload("/generate", "application/json", GENERATE_BODY, "image/png")
        for name, port in ports.items():
            check(Server(name, port, a.proc, a.log), w)
            client.run(port, w, max(connections), args.warm_up)
        rows: dict[tuple[int, str], list[Result]] = {}
        for r in range(args.rounds):
            for c in connections:
                shift = r % len(CONTENDERS)
                for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    res = client.run(ports[name], w, c, args.duration)
                    rows.setdefault((c, name), []).append(res)
                    print(f"  round {r + 1} c={c:<3d} {name:18s} {res.rps:8.0f} rps  p50 {res.p50_ms:6.2f} ms  "
                          f"p99 {res.p99_ms:6.2f} ms  errors {res.errors}", flush=True)  # fmt: skip
            print(f"  (load average {load_avg()})", flush=True)

        print()
        print('medians over rounds, POST /generate {"digit": 3, "n": 8}')
        header = f"{'contender':18s} {'conn':>4s} {'rps':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}"
        print(header)
        print("-" * len(header))
        for c in connections:
            for name in CONTENDERS:
                results = rows[(c, name)]
                rps, p50, p99 = (statistics.median(getattr(x, k) for x in results) for k in ("rps", "p50_ms", "p99_ms"))
                print(f"{name:18s} {c:4d} {rps:8.0f} {p50:8.2f} {p99:8.2f} {sum(x.errors for x in results):6d}")
        print(f"load average at the end: {load_avg()}")


if __name__ == "__main__":
    main()
