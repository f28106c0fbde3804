"""Memory and cold start per extra model: `python -m app` started cold with one model and with two (CVAE_MODELS; by
default the shipped model twice, under two names), each timed from its start to its first 200 from /readyz, warmed up
with requests to /generate and /encode of every model it serves, then the resident memory (VmRSS) of the server and
of each inference process. The two configurations alternate, run after run. Linux only (/proc).

    python -m tests.bench.models [--runs 3] [--requests 100] [--model-dir DIR] [--second-dir DIR]

Prints one line per run and the medians side by side, with what the second model added. Uses only `python -m app`
and HTTP.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.bench.footprint import children, rss_mb, start_ready, upload

ROOT = Path.cwd()
SHIPPED = ROOT / "artifacts" / "default"


@dataclass(frozen=True)
class Footprint:
    ready_s: float
    server_mb: float
    inference_mb: tuple[float, ...]  # one per served model

    @property
    def total_mb(self) -> float:
        return self.server_mb + sum(self.inference_mb)


def run_once(port: int, models: dict[str, Path], requests: int) -> Footprint:
    """One cold start of `python -m app` serving `models` (name -> directory), warmed up, measured, stopped."""
    env = {**os.environ, "CVAE_ACCESS_LOG": "false", "CVAE_LOG_LEVEL": "warning", "CVAE_SHUTDOWN_DELAY_S": "0",
           "CVAE_MODELS": ",".join(f"{name}={directory}" for name, directory in models.items())}  # fmt: skip
    proc, ready_s = start_ready(port, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            data = upload()
            for name in models:
                for i in range(requests):
                    body = {"label": i % 10, "n": 1 + i % 16}
                    assert c.post(f"/generate?model={name}", json=body).status_code == 200
                    assert c.post(f"/encode?model={name}", files={"file": ("d.png", data)}).status_code == 200
        kids = children(proc.pid)
        assert len(kids) == len(models), f"{len(kids)} inference processes for {len(models)} models"
        return Footprint(ready_s, rss_mb(proc.pid), tuple(rss_mb(kid) for kid in kids))
    finally:
        proc.terminate()
        proc.wait(30)


def describe(label: str, f: Footprint) -> str:
    each = ", ".join(f"{mb:.0f}" for mb in f.inference_mb)
    return (f"{label}: ready in {f.ready_s:.2f} s; server RSS {f.server_mb:.0f} MB; inference processes {each} MB; "
            f"total {f.total_mb:.0f} MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="cold starts of each configuration (default 3)")
    parser.add_argument("--requests", type=int, default=100, help="warm-up requests per endpoint and model")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--model-dir", type=Path, default=SHIPPED, help="the first model (default: the shipped one)")
    parser.add_argument("--second-dir", type=Path, help="the second model (default: --model-dir again)")
    args = parser.parse_args()
    one = {"first": args.model_dir.resolve()}
    two = {**one, "second": (args.second_dir or args.model_dir).resolve()}
    found: dict[str, list[Footprint]] = {"1 model": [], "2 models": []}
    for run in range(args.runs):
        for label, models in (("1 model", one), ("2 models", two)):
            f = run_once(args.port, models, args.requests)
            found[label].append(f)
            print(describe(f"run {run + 1}, {label}", f), flush=True)
    medians = {
        label: Footprint(
            statistics.median(f.ready_s for f in runs),
            statistics.median(f.server_mb for f in runs),
            tuple(statistics.median(f.inference_mb[i] for f in runs) for i in range(len(runs[0].inference_mb))),
        )
        for label, runs in found.items()
    }
    print(f"\nmedians of {args.runs} runs:")
    for label, f in medians.items():
        print(describe(label, f))
    a, b = medians["1 model"], medians["2 models"]
    print(
        f"the second model added: {b.ready_s - a.ready_s:+.2f} s to ready, {b.server_mb - a.server_mb:+.0f} MB to "
        f"the server, {b.inference_mb[-1]:.0f} MB of inference process; {b.total_mb - a.total_mb:+.0f} MB in all"
    )


if __name__ == "__main__":
    main()
