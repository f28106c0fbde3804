"""nginx on loopback with the project's load-balancer configuration (deploy/nginx/render.py fills in
deploy/nginx/nginx.conf.template, as the compose `lb` service does), for tests/system/test_replicas.py and
tests/bench/replicas.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "deploy" / "nginx" / "render.py"


def nginx_binary() -> str | None:
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


@contextlib.contextmanager
def nginx_in_front(upstreams: list[str], port: int, workdir: Path, max_body_bytes: int | None = None) -> Iterator[Path]:
    """nginx listening on 127.0.0.1:port in front of the HOST:PORT upstreams, until the block ends; yields its access
    log (complete once the block has ended: nginx is stopped gracefully)."""
    exe = nginx_binary()
    assert exe is not None, "nginx is not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    conf, access_log, error_log = workdir / "nginx.conf", workdir / "access.log", workdir / "error.log"
    cmd = [sys.executable, str(RENDER), "--listen", f"127.0.0.1:{port}", "--runtime-dir", str(workdir / "run"),
           "--access-log", str(access_log), "--error-log", str(error_log), "--out", str(conf)]  # fmt: skip
    cmd += [arg for u in upstreams for arg in ("--upstream", u)]
    if max_body_bytes is not None:
        cmd += ["--max-body-bytes", str(max_body_bytes)]
    subprocess.run(cmd, check=True)
    with open(workdir / "nginx.out", "wb") as out:
        proc = subprocess.Popen([exe, "-e", str(error_log), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"nginx exited {proc.returncode}: {error_log.read_text()[-2000:]}"
            livez = f"http://127.0.0.1:{port}/lb-livez"
            with contextlib.suppress(OSError), urllib.request.urlopen(livez, timeout=1) as r:  # URLError is an OSError
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, f"nginx not answering after 30 s: {error_log.read_text()[-2000:]}"
            time.sleep(0.05)
        yield access_log
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: finishes and logs the requests in flight
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
