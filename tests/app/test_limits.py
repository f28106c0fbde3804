"""Request body limits: 413 as problem+json, counted as the bytes arrive (not trusting Content-Length); /generate's
limit follows the model's latent size (its largest valid body, with room), /encode's is CVAE_MAX_UPLOAD_BYTES."""

from __future__ import annotations

import json

import pytest

from app.operations.generate import MAX_N, max_generate_body_bytes
from tests.conftest import MAX_UPLOAD_BYTES as LIMIT
from tests.conftest import D

GENERATE_LIMIT = max_generate_body_bytes(D)


def assert_413(status: int, headers: dict[str, str], body: bytes, limit: int = LIMIT) -> None:
    assert status == 413, body
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 413 and str(limit) in problem["detail"]


def test_upload_over_the_limit_is_413(client):
    r = client.post("/encode", files={"file": ("big.png", b"\0" * (LIMIT + 1), "image/png")})
    assert_413(r.status_code, r.headers, r.content)


def test_json_body_over_the_limit_is_413(client):
    r = client.post("/generate", json={"digit": 1, "latent": [0.0] * (LIMIT // 4)})
    assert_413(r.status_code, r.headers, r.content, GENERATE_LIMIT)


def test_chunked_body_without_content_length_over_the_limit_is_413(client):
    def chunks():
        for _ in range(20):
            yield b"x" * (LIMIT // 10)

    r = client.post("/encode", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert "content-length" not in r.request.headers  # sent chunked
    assert_413(r.status_code, r.headers, r.content)


def test_chunked_json_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"digit": 1, "latent": ['
        for _ in range(LIMIT // 5 + 1):
            yield b"0.0, "
        yield b"0.0]}"

    r = client.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert_413(r.status_code, r.headers, r.content, GENERATE_LIMIT)


@pytest.mark.parametrize("path", ["/encode", "/generate"])
def test_body_larger_than_its_content_length_claims_is_413(client, path):
    """Sent through the ASGI interface directly: no HTTP client would send a lying Content-Length."""
    app = client.app
    if path == "/encode":  # a well-formed multipart body, so the parser keeps reading
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        chunks = [head] + [b"\0" * (LIMIT // 4)] * 5 + [b"\r\n--b--\r\n"]
    else:
        chunks = [b'{"digit": 1, "latent": ['] + [b"0.0, " * (LIMIT // 20)] * 5 + [b"0.0]}"]

    content_type = b"multipart/form-data; boundary=b" if path == "/encode" else b"application/json"

    async def call() -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"test"), (b"content-length", b"100"), (b"content-type", content_type)],
            "client": ("127.0.0.1", 1), "server": ("test", 80),
        }  # fmt: skip
        pending = list(chunks)
        sent: list[dict] = []

        async def receive():
            body = pending.pop(0) if pending else b""
            return {"type": "http.request", "body": body, "more_body": bool(pending)}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    assert_413(*client.portal.call(call), LIMIT if path == "/encode" else GENERATE_LIMIT)


def test_content_length_over_the_limit_is_refused_before_reading(client):
    r = client.post("/encode", content=b"x" * (LIMIT + 5), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_413(r.status_code, r.headers, r.content)
    r = client.post("/generate", content=b"x" * (GENERATE_LIMIT + 5), headers={"Content-Type": "application/json"})
    assert_413(r.status_code, r.headers, r.content, GENERATE_LIMIT)


def test_body_at_the_limit_is_accepted(client):
    body = json.dumps({"digit": 1, "n": 1}).encode()
    body += b" " * (GENERATE_LIMIT - len(body))
    r = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200


def test_the_generate_limit_holds_the_largest_valid_body_of_the_model_and_no_more(client):
    """256 latent vectors of the model's size, each number as long as JSON writes a float, indented: it fits; the
    limit is far below the upload limit (parsing a body of megabytes would hold the event loop)."""
    latent = [[-0.12345678901234567] * D for _ in range(MAX_N)]
    body = json.dumps({"digit": [1], "n": MAX_N, "latent": latent, "padding": 0, "columns": 16}, indent=4)
    assert len(body) < GENERATE_LIMIT < LIMIT
    r = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert max_generate_body_bytes(16) < 256 * 1024  # the shipped model's: a quarter of a megabyte
