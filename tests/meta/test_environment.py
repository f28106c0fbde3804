"""The suite's verdicts do not depend on the user's environment: exported settings, OpenTelemetry variables and
proxies are removed before any test runs (tests/conftest.py), for the tests and every process they start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.settings import Settings
from tests.conftest import isolated_environment

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = {
    "CVAE_MAX_BATCH": "1",
    "CVAE_API_KEYS": '["k"]',
    "cvae_inference_process": "false",
    "OTEL_TRACES_EXPORTER": "console",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "ALL_PROXY": "socks5://127.0.0.1:9",
}


def test_settings_otel_and_proxies_are_dropped_and_the_suites_own_switches_kept() -> None:
    kept = isolated_environment({**HOSTILE, "CVAE_REQUIRE_NGINX": "1", "CVAE_PAGE_SCREENSHOT": "x.png", "PATH": "/b"})
    assert kept == {"CVAE_REQUIRE_NGINX": "1", "CVAE_PAGE_SCREENSHOT": "x.png", "PATH": "/b"}


def test_this_session_sees_none_of_them() -> None:
    leaked = {k for k in os.environ if isolated_environment({k: os.environ[k]}) == {}}
    assert not leaked, leaked
    assert Settings() == Settings.model_validate({})


def test_app_tests_pass_with_a_hostile_environment_exported(tmp_path: Path) -> None:
    """A real pytest run, in a process that inherits every variable above: an app test that would be answered 401
    (API keys), batch one request at a time, or send its loopback requests to a dead proxy still passes."""
    env = {**os.environ, **HOSTILE, "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/app/test_ops.py",
         "-k", "livez or model"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout
