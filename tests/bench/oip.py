"""The Open Inference Protocol (/v2) against the REST endpoints, side by side on one service.

    python -m tests.bench.oip [--model-dir DIR] [--duration S] [--connections 1,16] [--rounds N]
        [--client auto|wrk|python] [--env CVAE_X=V ...]

Starts one `python -m app` on 127.0.0.1 (access log off) and drives it, in turn, with the same closed-loop HTTP load
(wrk with a Lua script when it is installed, else tests/bench/serve.py's asyncio client) for each way of asking the
same thing, the order rotating every round so that a noisy machine slows all of them alike:

- generate: POST /generate {"digit": 3, "n": 8} (a PNG grid); digits-generate with 8 labels 3 as JSON tensors (the
  answer in JSON); the same as binary tensor data (the answer binary too). Unseeded, as the REST request.
- encode: POST /encode of one 28x28 MNIST digit (multipart); digits-encode of the same PNG as base64 text in JSON;
  the same as binary tensor data (the answer binary too).

Prints every run (requests/s, p50, p99, errors, the CPU per request of the server process and of its inference
process, the batches from /metrics), then the medians over rounds and, per connection count, the ratios of
throughputs measured in the same round (median over rounds) against the goals: each protocol way >= 0.8 of its
REST endpoint, binary >= JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import struct
import tempfile
from pathlib import Path

from tests.bench.serve import (
    ROOT,
    PythonClient,
    Result,
    Workload,
    Wrk,
    batch_metrics,
    batch_summary,
    check,
    cpu_seconds,
    encode_workload,
    free_port,
    load_avg,
    mnist_png,
    start,
    stop,
)

LABEL, COUNT = 3, 8
WAYS = ("rest", "v2-json", "v2-binary")
# (operation, way, against): the least throughput ratio aimed for, measured in the same round
GOALS = {
    ("generate", "v2-json", "rest"): 0.8,
    ("generate", "v2-binary", "rest"): 0.8,
    ("generate", "v2-binary", "v2-json"): 1.0,
    ("encode", "v2-json", "rest"): 0.8,
    ("encode", "v2-binary", "rest"): 0.8,
    ("encode", "v2-binary", "v2-json"): 1.0,
}


def infer_json(model: str, inputs: list[dict[str, object]]) -> Workload:
    body = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
    return Workload(f"/v2/models/{model}/infer", "application/json", body, "application/json")


def infer_binary(model: str, name: str, datatype: str, shape: list[int], section: bytes) -> Workload:
    """One input as binary tensor data, every output asked for as binary."""
    tensor = {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(section)}}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}, separators=(",", ":"))
    header = head.encode()
    return Workload(
        f"/v2/models/{model}/infer", "application/octet-stream", header + section, "application/octet-stream",
        headers=(("Inference-Header-Content-Length", str(len(header))),),
    )  # fmt: skip


def workloads(model_name: str) -> dict[str, dict[str, Workload]]:
    """operation -> way -> its request."""
    png = mnist_png()
    generate, encode = f"{model_name}-generate", f"{model_name}-encode"
    return {
        "generate": {
            "rest": Workload("/generate", "application/json", f'{{"digit": {LABEL}, "n": {COUNT}}}'.encode(),
                             "image/png"),
            "v2-json": infer_json(generate, [{"name": "label", "datatype": "INT64", "shape": [COUNT],
                                              "data": [LABEL] * COUNT}]),
            "v2-binary": infer_binary(generate, "label", "INT64", [COUNT], struct.pack(f"<{COUNT}q", *[LABEL] * COUNT)),
        },
        "encode": {
            "rest": encode_workload(),
            "v2-json": infer_json(encode, [{"name": "image", "datatype": "BYTES", "shape": [1],
                                            "data": [base64.b64encode(png).decode()]}]),
            "v2-binary": infer_binary(encode, "image", "BYTES", [1], struct.pack("<I", len(png)) + png),
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--connections", default="1,16", help="comma-separated connection counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of untimed load per way first")
    parser.add_argument("--operations", default="generate,encode", help="comma-separated: generate, encode")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--env", action="append", default=[], metavar="CVAE_X=V", help="a setting for the service (repeatable)"
    )
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    operations = [o.strip() for o in args.operations.split(",")]
    if not (args.model_dir / "manifest.json").is_file():
        raise SystemExit(f"no model directory at {args.model_dir} (give --model-dir)")
    service_env = dict(kv.split("=", 1) for kv in args.env)
    model_name = {**os.environ, **service_env}.get("CVAE_MODEL_NAME", "digits")

    with tempfile.TemporaryDirectory(prefix="cvae-bench-oip-") as tmp:
        workdir = Path(tmp)
        exe = shutil.which("wrk")
        if args.client == "wrk" and exe is None:
            raise SystemExit("wrk not found")
        client: Wrk | PythonClient = Wrk(exe, workdir) if exe and args.client != "python" else PythonClient()
        print(f"load: {client.name}; {args.duration:g} s per run, {args.rounds} rounds, connections {connections}")
        print(f"model: {args.model_dir}; service settings: {service_env or 'defaults'}")
        print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()} (1, 5, 15 min)")
        port = free_port()
        env = {"CVAE_ACCESS_LOG": "false", "CVAE_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT),
               "CVAE_MODEL_DIR": str(args.model_dir), **service_env}  # fmt: skip
        server = start("service", ["-m", "app", "--port", str(port)], env, port, workdir)
        try:
            rows: dict[tuple[str, int, str], list[Result]] = {}
            ratios: dict[tuple[str, int, str, str], list[float]] = {}
            for operation in operations:
                ways = workloads(model_name)[operation]
                for w in ways.values():
                    check(server, w)
                for w in ways.values():
                    client.run(port, w, max(connections), args.warm_up)
                for r in range(args.rounds):
                    for c in connections:
                        shift = (r + connections.index(c)) % len(WAYS)
                        results: dict[str, Result] = {}
                        for way in WAYS[shift:] + WAYS[:shift]:
                            before, cpu0 = batch_metrics(port, operation), cpu_seconds(server.proc.pid)
                            results[way] = res = client.run(port, ways[way], c, args.duration)
                            cpu1 = cpu_seconds(server.proc.pid)
                            own, total = (1e6 * (b - a) / max(1, res.requests) for a, b in zip(cpu0, cpu1, strict=True))
                            rows.setdefault((operation, c, way), []).append(res)
                            print(f"  round {r + 1} {operation:8s} c={c:<3d} {way:9s} {res.rps:8.0f} rps  "
                                  f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  errors {res.errors}  "
                                  f"cpu {own:4.0f} (+inference {total - own:4.0f}) us/req"
                                  f"{batch_summary(before, batch_metrics(port, operation))}",
                                  flush=True)  # fmt: skip
                        for op, way, against in GOALS:
                            if op == operation and results[against].rps:
                                ratio = results[way].rps / results[against].rps
                                ratios.setdefault((operation, c, way, against), []).append(ratio)
                    print(f"  (load average {load_avg()})", flush=True)
            report(rows, ratios, operations, connections)
        finally:
            stop(server)
        print(f"load average at the end: {load_avg()}")


def report(
    rows: dict[tuple[str, int, str], list[Result]],
    ratios: dict[tuple[str, int, str, str], list[float]],
    operations: list[str],
    connections: list[int],
) -> None:
    print()
    print("medians over rounds")
    header = f"{'operation':9s} {'way':9s} {'conn':>4s} {'rps':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}"
    print(header)
    print("-" * len(header))
    for operation in operations:
        for c in connections:
            for way in WAYS:
                results = rows[(operation, c, way)]
                print(
                    f"{operation:9s} {way:9s} {c:4d} {statistics.median(r.rps for r in results):8.0f} "
                    f"{statistics.median(r.p50_ms for r in results):8.2f} "
                    f"{statistics.median(r.p99_ms for r in results):8.2f} {sum(r.errors for r in results):6d}"
                )
    print()
    print("throughput ratios, measured in the same round (median over rounds), against the goals")
    for operation in operations:
        for c in connections:
            for (op, way, against), goal in GOALS.items():
                if op != operation:
                    continue
                ratio = statistics.median(ratios[(operation, c, way, against)])
                verdict = "meets" if ratio >= goal else "MISSES"
                print(f"  {operation:8s} c={c:<3d} {way:9s} / {against:8s} {ratio:5.2f}  (goal >= {goal:g}: {verdict})")


if __name__ == "__main__":
    main()
