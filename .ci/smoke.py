"""End-to-end checks against a running API, from the host (standard library only).

python3 .ci/smoke.py http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import re
import struct
import sys
import urllib.error
import urllib.request
import uuid
import zlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_png(size: int = 28) -> bytes:
    """A size x size 8-bit grayscale PNG: a white vertical bar on black, roughly a '1'."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(255 if size // 2 - 2 <= x <= size // 2 + 1 and 4 <= y < size - 4 else 0 for x in range(size))
        for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def request(method: str, url: str, body: bytes | None = None, content_type: str | None = None, header="Content-Type"):
    """(status, the answer's `header`, body), for error statuses too."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get(header, ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get(header, ""), err.read()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, ctype) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def check(name: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail != "" else ""), flush=True)
    if not ok:
        sys.exit(1)


def main(base: str) -> None:
    base = base.rstrip("/")
    if not base.startswith(("http://127.0.0.1:", "http://localhost:")):
        sys.exit("smoke.py only talks to 127.0.0.1")

    status, _, body = request("GET", f"{base}/livez")
    check("GET /livez -> 200", status == 200, status)

    status, _, body = request("GET", f"{base}/readyz")
    check("GET /readyz -> 200", status == 200, f"{status} {body[:200]!r}")

    status, ctype, body = request(
        "POST", f"{base}/generate", json.dumps({"digit": 3, "n": 8}).encode(), "application/json"
    )
    check(
        "POST /generate -> 200 image/png",
        status == 200 and ctype.startswith("image/png"),
        f"{status} {ctype} {body[:200]!r}" if status != 200 else f"{len(body)} bytes",
    )
    check("POST /generate body is a PNG", body.startswith(PNG_MAGIC), body[:8])

    status, _, body = request(
        "POST", f"{base}/generate", json.dumps({"digit": 10, "n": 1}).encode(), "application/json"
    )
    check("POST /generate digit=10 -> 422", status == 422, status)

    data, ctype = multipart({"digit": "1"}, {"file": ("one.png", tiny_png(), "image/png")})
    status, rtype, body = request("POST", f"{base}/encode", data, ctype)
    check(
        "POST /encode -> 200 JSON",
        status == 200 and rtype.startswith("application/json"),
        f"{status} {rtype} {body[:300]!r}",
    )
    payload = json.loads(body)
    check(
        "POST /encode JSON has a numeric `mean`",
        isinstance(payload.get("mean"), list) and all(isinstance(v, (int, float)) for v in payload["mean"]),
        {k: payload[k] for k in list(payload)[:4]},
    )

    for page in ("/", "/docs"):  # the page and the docs, with every file they load (package data of the image)
        status, ctype, body = request("GET", f"{base}{page}")
        check(f"GET {page} -> 200 text/html", status == 200 and ctype.startswith("text/html"), f"{status} {ctype}")
        for ref in re.findall(r'(?:src|href)="(static/[^"]+)"', body.decode()):
            status, ctype, _ = request("GET", f"{base}/{ref}")
            check(f"GET /{ref} -> 200", status == 200, f"{status} {ctype}")

    status, _, body = request("GET", f"{base}/model")
    check("GET /model -> 200", status == 200, status)

    status, ctype, body = request("GET", f"{base}/metrics")
    check("GET /metrics -> 200 text", status == 200 and ctype.startswith("text/plain"), f"{status} {ctype}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
