"""The server process's footprint: `python -m app` started cold on the shipped model, timed to its first 200 from
/readyz, warmed up with a few hundred requests to both endpoints, then its resident memory (VmRSS) and its inference
process's, and whether each maps libtorch. Linux only (/proc).

    python -m tests.bench.footprint [--runs 3] [--model-dir DIR]

Prints one line per run and the median cold start. Uses only `python -m app` and HTTP, so the same file measures an
older checkout run from its own root.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path.cwd()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def maps_libtorch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def upload() -> bytes:
    img = Image.new("L", (120, 160), 255)
    img.paste(20, (55, 25, 65, 135))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def start_ready(port: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    """`python -m app` started on `port` with `env`, once its /readyz answers 200. -> (the process, seconds from just
    before its start to that 200: its cold start)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            while True:
                assert proc.poll() is None, "the server exited"
                try:
                    if c.get("/readyz").status_code == 200:
                        return proc, time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise


def run_once(port: int, model_dir: Path | None) -> str:
    env = {**os.environ, "CVAE_ACCESS_LOG": "false", "CVAE_LOG_LEVEL": "warning"}
    if model_dir is not None:
        env["CVAE_MODEL_DIR"] = str(model_dir)
    proc, ready_s = start_ready(port, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            data = upload()
            for i in range(200):
                headers = {"Accept": "application/json"} if i % 4 == 0 else {}
                assert c.post("/generate", json={"digit": i % 10, "n": 1 + i % 16}, headers=headers).status_code == 200
                assert c.post("/encode", files={"file": ("d.png", data)}).status_code == 200
            c.get("/metrics")
        kids = children(proc.pid)
        line = f"ready in {ready_s:.2f} s; server RSS {rss_mb(proc.pid):.0f} MB, "
        line += f"libtorch mapped: {maps_libtorch(proc.pid)}"
        for kid in kids:
            line += f"; inference process RSS {rss_mb(kid):.0f} MB, libtorch mapped: {maps_libtorch(kid)}"
        return line
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    lines = [run_once(args.port, args.model_dir) for _ in range(args.runs)]
    print("\n".join(lines))
    starts = [float(line.split()[2]) for line in lines]
    print(f"median ready: {statistics.median(starts):.2f} s")


if __name__ == "__main__":
    main()
