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

from tests.conftest import free_port, wait_for, wait_ready

ROOT = Path(__file__).resolve().parents[2]
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
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 503, 10)  # draining, port still open
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output  # a drained SIGTERM is a clean exit
    assert "Traceback" not in output


def test_python_m_app_serves_several_models_reloads_all_on_sighup_and_drains_all(tiny_model_dir, fashion_model_dir):
    port = free_port()
    env = {"CVAE_MODELS": f"digits={tiny_model_dir},fashion={fashion_model_dir}", "CVAE_SHUTDOWN_DELAY_S": "0",
           "CVAE_ACCESS_LOG": "false"}  # fmt: skip
    with serving(["-m", "app", "--port", str(port)], env, port) as proc:
        base = f"http://127.0.0.1:{port}"
        pids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(pids) == 2  # an inference process per model
        r = httpx.post(f"{base}/generate?model=fashion", json={"label": "coat", "n": 2}, timeout=10)
        assert r.status_code == 200 and r.headers["x-model-id"] == httpx.get(f"{base}/model?model=fashion").json()["id"]

        def reloaded(name: str) -> float:
            series = f'cvae_reloads_total{{model="{name}",outcome="reloaded"}} '
            line = next(x for x in httpx.get(f"{base}/metrics").text.splitlines() if x.startswith(series))
            return float(line.split()[-1])

        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloaded("digits") == 1 and reloaded("fashion") == 1, 120)
        assert httpx.get(f"{base}/readyz").status_code == 200
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        wait_for(lambda: len(children.read_text().split()) == 2, 30)  # each old one exits once it has drained
        assert not set(children.read_text().split()) & set(pids)  # both replaced
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
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


def raw_status(port: int, request: bytes, wait_s: float = 0.0) -> int:
    """Sends `request` (a head, maybe part of a body) on a new connection, waits wait_s, -> the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        time.sleep(wait_s)
        response = b""
        while b"\r\n" not in response:
            data = s.recv(65536)
            assert data, f"closed without an answer: {response!r}"
            response += data
    return int(response.split(b" ", 2)[1])


def test_every_refusal_is_counted_under_the_endpoint_it_was_for(tiny_model_dir):
    """413, 408, 415, 429 and 503 (a connection over the cap) on /generate and /encode: each a series of its own in
    /metrics, labelled with the endpoint, never "unmatched"."""
    port = free_port()
    keys = iter(f"key-{i:02d}-0123456789abcdef" for i in range(100))  # a key per request: only a repeated one waits
    env = {"CVAE_MODEL_DIR": str(tiny_model_dir), "CVAE_MAX_UPLOAD_BYTES": "100000", "CVAE_BODY_TIMEOUT_S": "0.5",
           "CVAE_MAX_CONNECTIONS": "2", "CVAE_API_KEYS": ",".join(f"key-{i:02d}-0123456789abcdef" for i in range(100)),
           "CVAE_RATE_LIMIT": "0.001", "CVAE_RATE_BURST": "1", "CVAE_ACCESS_LOG": "false"}  # fmt: skip

    def post(path: str, key: str, length: int, body: bytes = b"", media: str = "application/json") -> bytes:
        return f"POST {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nContent-Type: {media}\r\n" \
            f"Content-Length: {length}\r\n\r\n".encode() + body  # fmt: skip

    with serving(["-m", "app", "--port", str(port)], env, port):
        for path in ("/generate", "/encode"):
            assert raw_status(port, post(path, next(keys), 200_001)) == 413
            media = "application/json" if path == "/generate" else "multipart/form-data; boundary=x"
            assert raw_status(port, post(path, next(keys), 50, b"{", media=media), wait_s=1.0) == 408
            assert raw_status(port, post(path, next(keys), 2, b"hi", media="text/plain")) == 415
            repeated = post(path, next(keys), 2, b"{}")
            raw_status(port, repeated)  # its one request (a 422 or 415: the body is no request)
            assert raw_status(port, repeated) == 429
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # the cap's connections
            try:
                time.sleep(0.2)
                assert raw_status(port, post(path, next(keys), 2, b"{}")) == 503
            finally:
                for s in held:
                    s.close()
            time.sleep(0.2)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for path in ("/generate", "/encode"):
        for status in (413, 408, 415, 429, 503):
            series = f'cvae_http_requests_total{{method="POST",route="{path}",status="{status}"}}'
            assert f"{series} 1.0" in text or f"{series} 2.0" in text, series
    assert 'route="unmatched"' not in text
