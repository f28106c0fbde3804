"""deploy/nginx/render.py and the load balancer's settings against the app's, and the compose `scale` profile
that runs it. (nginx itself runs the result in tests/system/test_replicas.py.)"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.core.errors import ServiceError
from app.http.middleware import BodyTooLarge
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RENDER_PY = ROOT / "deploy" / "nginx" / "render.py"
LB_DOCKERFILE = (ROOT / "deploy" / "nginx" / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # PyYAML resolves the `<<: *api` merges

_spec = importlib.util.spec_from_file_location("nginx_render", RENDER_PY)
render_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_module)


def render(**overrides: object) -> str:
    args = {
        "listen": "8080", "upstreams": ["api-replica:8000"], "runtime_dir": "/tmp/nginx",
        "access_log": "/dev/stdout", "error_log": "stderr", "max_body_bytes": 4096,
    } | overrides  # fmt: skip
    return render_module.render(render_module.TEMPLATE.read_text(), **args)


def run_render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RENDER_PY), *args], capture_output=True, text=True, timeout=30)


def test_render_writes_one_server_line_per_upstream_and_fills_every_field() -> None:
    text = render(upstreams=["127.0.0.1:8001", "127.0.0.1:8002", "[::1]:8003"], listen="127.0.0.1:9000")
    servers = re.findall(r"^\s*server (\S+) max_fails=\d+ fail_timeout=\d+s;$", text, flags=re.M)
    assert servers == ["127.0.0.1:8001", "127.0.0.1:8002", "[::1]:8003"]
    assert "listen 127.0.0.1:9000;" in text and "client_max_body_size 4096;" in text
    assert "pid /tmp/nginx/nginx.pid;" in text and "access_log /dev/stdout upstreams;" in text
    assert not re.search(r"@[A-Z0-9_]+@", text)


def test_retries_cover_what_a_leaving_replica_causes() -> None:
    text = render()
    retry = re.search(r"^\s*proxy_next_upstream (.+);$", text, flags=re.M).group(1).split()
    # refused/reset connections, a draining replica's 503, and POSTs (nginx retries those only if told)
    assert {"error", "timeout", "http_503", "non_idempotent"} <= set(retry)
    assert re.search(r"^\s*proxy_next_upstream_tries [2-9];$", text, flags=re.M)


def test_balancers_413_is_the_services_own_problem() -> None:
    limit = 4096
    body = re.search(r"return 413 '(.*)';", render(max_body_bytes=limit)).group(1)
    service = ServiceError(413, BodyTooLarge(limit).detail, kind=BodyTooLarge.kind)
    assert json.loads(body) == service.body()


def test_balancers_own_502_and_504_are_problem_json() -> None:
    text = render()
    for status in (502, 504):
        body = json.loads(re.search(rf"return {status} '(.*)';", text).group(1))
        assert body["status"] == status and body["type"].startswith("tag:cvae-digits,2025:problems/") and body["detail"]


def test_default_body_limit_is_the_services() -> None:
    assert Settings.model_fields["max_upload_bytes"].default == render_module.DEFAULT_MAX_BODY_BYTES


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "http://x"], "argument --listen: expected [HOST:]PORT"),
        (["--listen", "70000"], "the port must be a number from 1 to 65535"),
        (["--upstream", "api-replica"], "argument --upstream: expected HOST:PORT"),
        (["--upstream", "a b:80"], "argument --upstream: expected HOST:PORT"),
        (["--runtime-dir", "relative/dir"], "argument --runtime-dir: expected an absolute path"),
        (["--access-log", "/tmp/a log"], "argument --access-log: expected an absolute path"),
        (["--error-log", "/tmp/x;y"], "argument --error-log: expected an absolute path"),
        (["--max-body-bytes", "0"], "argument --max-body-bytes: expected a whole number of bytes of at least 1"),
    ],
)
def test_render_refuses_bad_arguments_naming_them(args: list[str], message: str) -> None:
    base = {"--listen": "8080", "--upstream": "api:8000", "--runtime-dir": "/tmp/nginx"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = [arg for key, value in (base | given).items() for arg in (key, value)]
    proc = run_render(*argv)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_render_needs_an_upstream() -> None:
    proc = run_render("--listen", "8080", "--runtime-dir", "/tmp/nginx")
    assert proc.returncode == 2 and "--upstream" in proc.stderr


def test_render_cli_writes_the_file(tmp_path: Path) -> None:
    out, runtime = tmp_path / "nginx.conf", tmp_path / "run"
    proc = run_render("--listen", "8080", "--upstream", "a:1", "--runtime-dir", str(runtime), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert runtime.is_dir() and "server a:1 " in out.read_text()


# --- the compose `scale` profile ------------------------------------------------------------------------------


def lb_command() -> list[str]:
    command = re.search(r"^CMD \[(.*)\]$", LB_DOCKERFILE, flags=re.M).group(1)
    return [a.strip().strip('"') for a in command.split(",")]


def test_compose_replicas_are_the_api_unpublished_behind_lb_on_the_apis_port() -> None:
    services = COMPOSE["services"]
    api, replica, lb = services["api"], services["api-replica"], services["lb"]
    assert "profiles" not in api and replica["profiles"] == lb["profiles"] == ["scale"]
    assert {k: v for k, v in replica.items() if k not in ("profiles", "deploy")} == {
        k: v for k, v in api.items() if k != "ports"
    }
    assert "ports" not in replica and replica["deploy"]["replicas"] == "${CVAE_REPLICAS:-2}"
    (api_port,) = api["ports"]
    (lb_port,) = lb["ports"]
    assert api_port.split(":")[:-1] == lb_port.split(":")[:-1]  # the same host port
    listen = lb["command"][lb["command"].index("--listen") + 1]
    assert lb_port.rsplit(":", 1)[1] == listen and f"EXPOSE {listen}" in LB_DOCKERFILE
    assert lb["depends_on"] == {"api-replica": {"condition": "service_healthy"}}


def test_compose_lb_points_at_the_replicas_with_the_services_body_limit() -> None:
    lb = COMPOSE["services"]["lb"]
    for command in (lb["command"], lb_command()):
        assert command[command.index("--upstream") + 1] == "api-replica:8000"
    limit = lb["command"][lb["command"].index("--max-body-bytes") + 1]
    assert (
        limit
        == COMPOSE["services"]["api"]["environment"]["CVAE_MAX_UPLOAD_BYTES"]
        == "${CVAE_MAX_UPLOAD_BYTES:-4194304}"
    )
    assert int(limit.split(":-")[1].rstrip("}")) == Settings.model_fields["max_upload_bytes"].default


def test_lb_image_builds_from_the_apis_base_image() -> None:
    api_dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.compile(r"^ARG PYTHON_IMAGE=(\S+)$", flags=re.M)
    assert base.search(LB_DOCKERFILE).group(1) == base.search(api_dockerfile).group(1)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", LB_DOCKERFILE, flags=re.M)
    assert re.findall(r"^USER (\d+)", LB_DOCKERFILE, flags=re.M)[-1] != "0"
