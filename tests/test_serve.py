"""The real thing: `python -m app` as a subprocess on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(port, proc, proc.stdout.read)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def chunked_post(port: int, path: str, chunks: list[bytes], content_type: str) -> tuple[int, bytes]:
    """POST with Transfer-Encoding: chunked (no Content-Length) over a raw socket -> (status, raw response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):  # the server may close as soon as it has answered
            for chunk in chunks:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response or len(response) < 200:
            data = s.recv(65536)
            if not data:
                break
            response += data
    return int(response.split(b" ", 2)[1]), response


def test_python_m_app_serves_over_http_and_drains_on_sigterm(tiny_model_dir):
    port = free_port()
    env = {"CVAE_MODEL_DIR": str(tiny_model_dir), "CVAE_MAX_UPLOAD_BYTES": "100000", "CVAE_SHUTDOWN_DELAY_S": "1.5"}
    with serving(["-m", "app", "--port", str(port)], env, port) as proc:
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/generate", json={"digit": [1, 2], "n": 4, "seed": 3}, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "3"
        assert Image.open(io.BytesIO(r.content)).size == (4 * 30 + 2, 2 * 30 + 2)
        again = httpx.post(f"{base}/generate", json={"digit": [1, 2], "n": 4, "seed": 3}, timeout=10)
        assert again.content == r.content

        img = Image.new("L", (40, 60), 255)
        img.paste(0, (17, 8, 23, 52))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        r = httpx.post(f"{base}/encode", files={"file": ("d.png", buf.getvalue(), "image/png")}, timeout=10)
        assert r.status_code == 200 and len(r.json()["mean"]) == 4

        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        status, raw = chunked_post(port, "/encode", [head] + [b"\0" * 8192] * 20, "multipart/form-data; boundary=b")
        assert status == 413 and b"application/problem+json" in raw

        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503  # draining, port still open
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output  # a drained SIGTERM is a clean exit
    assert "Traceback" not in output


@pytest.mark.parametrize("problem", ["missing", "checksum"])
def test_python_m_app_refuses_a_bad_model_dir_with_one_line_and_exit_1(tiny_model_dir, tmp_path, problem):
    if problem == "missing":
        model_dir, named = tmp_path / "nowhere", "nowhere"
    else:
        model_dir, named = Path(shutil.copytree(tiny_model_dir, tmp_path / "bad")), "encoder.pt"
        with open(model_dir / "encoder.pt", "ab") as f:
            f.write(b"!")
    env = {**os.environ, "CVAE_MODEL_DIR": str(model_dir)}
    proc = subprocess.run([sys.executable, "-m", "app", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in lines[0], lines
