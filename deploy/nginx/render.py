"""Render the load balancer's nginx.conf from nginx.conf.template (beside this file), then run nginx with it:

    python3 deploy/nginx/render.py --listen 8080 --upstream api-replica:8000 --runtime-dir /tmp/nginx \\
        --out /tmp/nginx/nginx.conf
    nginx -e stderr -c /tmp/nginx/nginx.conf

Standard library only: it runs in the balancer's image (deploy/nginx/Dockerfile), which has Python (it is built FROM
the API's base image) but not the project. Bad arguments exit 2 with a message naming the argument.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from http import HTTPStatus
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
PROBLEM_TYPE_PREFIX = "tag:cvae-digits,2025:problems/"  # as app/core/errors.py names the service's problem types
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # the service's CVAE_MAX_UPLOAD_BYTES default (a test keeps them equal)

_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_PATH = re.compile(r"/[A-Za-z0-9._/-]*")  # nothing nginx would read as syntax (no spaces, quotes, ;, $ or {})


def _port(text: str, what: str) -> str:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{what}: the port must be a number from 1 to 65535, not {text!r}")
    return str(int(text))


def listen_address(value: str) -> str:
    """[HOST:]PORT, as nginx's `listen` takes it."""
    match = re.fullmatch(rf"(?:({_HOST}):)?(\w+)", value)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, e.g. 8080 or 127.0.0.1:8080, not {value!r}")
    host, port = match.groups()
    return f"{host}:{_port(port, value)}" if host else _port(port, value)


def upstream_address(value: str) -> str:
    """HOST:PORT of one replica (a hostname stands for every address it resolves to when nginx starts)."""
    match = re.fullmatch(rf"({_HOST}):(\w+)", value)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. api-replica:8000 or 127.0.0.1:8001, not {value!r}")
    return f"{match.group(1)}:{_port(match.group(2), value)}"


def absolute_path(value: str) -> str:
    if _PATH.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(f"expected an absolute path of letters, digits and . _ / -, not {value!r}")
    return value


def error_log_target(value: str) -> str:
    return value if value == "stderr" else absolute_path(value)


def byte_count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes of at least 1, not {value!r}")
    return int(value)


def problem(status: int, kind: str, detail: str) -> str:
    """An RFC 9457 body as the service writes one (app/core/errors.py), fit for a single-quoted nginx string."""
    body = json.dumps(
        {"type": PROBLEM_TYPE_PREFIX + kind, "title": HTTPStatus(status).phrase, "status": status, "detail": detail},
        separators=(",", ":"),
    )
    assert "'" not in body and "$" not in body and "\\" not in body, body  # nginx would read these as syntax
    return body


def render(
    template: str,
    *,
    listen: str,
    upstreams: list[str],
    runtime_dir: str,
    access_log: str,
    error_log: str,
    max_body_bytes: int,
) -> str:
    """The template with every @NAME@ field filled in. The line holding @UPSTREAM@ is repeated once per upstream."""
    server_line = next(line for line in template.splitlines() if "@UPSTREAM@" in line)
    servers = "\n".join(server_line.replace("@UPSTREAM@", u) for u in upstreams)
    fields = {
        "LISTEN": listen,
        "RUNTIME_DIR": runtime_dir.rstrip("/") or "/",
        "ACCESS_LOG": access_log,
        "ERROR_LOG": error_log,
        "MAX_BODY_BYTES": str(max_body_bytes),
        "PROBLEM_413": problem(
            413, "body-too-large", f"the request body is larger than the limit of {max_body_bytes} bytes"
        ),
        "PROBLEM_502": problem(502, "no-replica", "no replica of the service answered; try again shortly"),
        "PROBLEM_504": problem(504, "replica-timeout", "no replica of the service answered in time; try again"),
    }
    text = template.replace(server_line, servers)
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    left = re.findall(r"@[A-Z0-9_]+@", text)
    assert not left, f"fields the template has and render() does not fill: {left}"
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=listen_address, required=True, help="[HOST:]PORT nginx listens on")
    parser.add_argument(
        "--upstream", type=upstream_address, action="append", required=True,
        help="HOST:PORT of a replica; repeat for each (a compose service name stands for all its replicas)",
    )  # fmt: skip
    parser.add_argument(
        "--runtime-dir", type=absolute_path, required=True,
        help="directory for nginx's pid and temporary files (created if missing)",
    )  # fmt: skip
    parser.add_argument("--access-log", type=absolute_path, default="/dev/stdout", help="default: /dev/stdout")
    parser.add_argument("--error-log", type=error_log_target, default="stderr", help="default: stderr")
    parser.add_argument(
        "--max-body-bytes", type=byte_count, default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body; set it to the service's CVAE_MAX_UPLOAD_BYTES (default {DEFAULT_MAX_BODY_BYTES})",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the configuration here (default: standard output)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    text = render(
        TEMPLATE.read_text(),
        listen=args.listen,
        upstreams=args.upstream,
        runtime_dir=args.runtime_dir,
        access_log=args.access_log,
        error_log=args.error_log,
        max_body_bytes=args.max_body_bytes,
    )
    Path(args.runtime_dir).mkdir(parents=True, exist_ok=True)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
