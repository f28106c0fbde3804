"""app/api/fastpath.py: POST /generate and POST /encode answered without FastAPI's per-request machinery when the body
is in its plainest form and valid, and by the FastAPI routes otherwise. Both must answer every request byte for
byte alike."""

from __future__ import annotations

import pytest

import app.api.routes.operations as generate_route
from app.api.fastpath import parse_upload
from app.operations.encode import EncodeForm
from tests.conftest import drawing, encoded

FAST = {"Content-Type": "application/json"}
ROUTE = {"Content-Type": "application/json; charset=utf-8"}  # also JSON to FastAPI, but not taken by the fast path
B = "Bound4ry-x"
FAST_FORM = {"Content-Type": f"multipart/form-data; boundary={B}"}
ROUTE_FORM = {"Content-Type": f'multipart/form-data; boundary="{B}"'}  # quoted: the same to FastAPI, not fast
PNG = encoded(drawing())


def counting(monkeypatch, module) -> list[int]:
    """Counts the requests a FastAPI route answers (the fast path never calls the route module's runtime_of)."""
    calls: list[int] = []
    original = module.runtime_of

    def runtime_of(state, model=None):
        calls.append(1)
        return original(state, model)

    monkeypatch.setattr(module, "runtime_of", runtime_of)
    return calls


@pytest.fixture
def route_calls(monkeypatch) -> list[int]:
    return counting(monkeypatch, generate_route)


@pytest.fixture
def encode_route_calls(monkeypatch) -> list[int]:
    return counting(monkeypatch, generate_route)  # one module routes every operation


def form(*parts: tuple[str, bytes], end: bytes = b"--\r\n") -> bytes:
    """A multipart body from (headers, content) parts, CRLF line ends, closed with `end`."""
    body = b"".join(f"--{B}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n" for headers, content in parts)
    return body + f"--{B}".encode() + end


FILE = 'Content-Disposition: form-data; name="file"; filename="d.png"\r\nContent-Type: image/png'
DIGIT = 'Content-Disposition: form-data; name="digit"'
LABEL = 'Content-Disposition: form-data; name="label"'


def test_plain_json_takes_the_fast_path_and_anything_else_the_route(client, route_calls):
    body = b'{"digit": 3, "n": 2, "seed": 1}'
    assert client.post("/generate", content=body, headers=FAST).status_code == 200
    assert route_calls == []
    assert client.post("/generate", content=body, headers=ROUTE).status_code == 200
    assert route_calls == [1]
    invalid = client.post("/generate", content=b'{"digit": 3, "n": 0}', headers=FAST)
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["loc"] == ["body", "n"]  # FastAPI's own words


def test_a_model_query_takes_the_fast_path_and_any_other_query_the_route(client, route_calls):
    body = b'{"digit": 3, "n": 2, "seed": 1}'
    assert client.post("/generate?model=digits", content=body, headers=FAST).status_code == 200
    assert client.post("/generate?model=nope", content=body, headers=FAST).status_code == 404
    assert route_calls == []
    assert client.post("/generate?model=digits&n=2", content=body, headers=FAST).status_code == 200
    assert client.post("/generate?model=%64igits", content=body, headers=FAST).status_code == 200
    assert route_calls == [1, 1]


@pytest.mark.parametrize(
    "body, accept",
    [
        (b'{"digit": [1, 2], "n": 3, "seed": 9}', None),
        (b'{"digit": 4, "n": 2, "seed": 9, "temperature": 0.5, "scale": 2, "columns": 1}', None),
        (b'{"digit": 4, "n": 2, "seed": 9}', "application/json"),
        (b'{"digit": 4, "latent": [0.1, 0.2, 0.3, 0.4]}', "application/json"),
        (b'{"digit": 4, "n": 2, "seed": 9}', "text/html"),  # 406
        (b'{"digit": 4, "n": 2, "seed": 9, "latent": [0, 0, 0]}', None),  # 422 from the route
        (b'{"digit": 4, "latent": [0, 0, 0]}', None),  # latent of the wrong size: 422 from the service
        (b'{"digit": 12}', None),
        (b'{"digit": 4, "n": 2, "extra": 1}', None),
        (b'{"digit": "four"}', None),  # no such class: 422 from the service
        (b'{"label": "4", "seed": 1}', None),  # a class name
        (b'{"label": 4, "digit": 4}', None),  # both: 422
        (b'{"digit": 4,', None),  # not JSON
        (b"null", None),
        (b"[]", None),
        (b"", None),
    ],
)
def test_the_fast_path_answers_exactly_as_the_route(client, body, accept):
    extra = {"Accept": accept} if accept else {}
    fast = client.post("/generate", content=body, headers={**FAST, **extra})
    route = client.post("/generate", content=body, headers={**ROUTE, **extra})
    assert fast.status_code == route.status_code
    assert fast.content == route.content
    for name in ("content-type", "x-seed", "x-model-id", "content-length"):
        assert fast.headers.get(name) == route.headers.get(name), name


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [("/generate", b'{"digit": 1, "n": 1}', FAST), ("/encode", form((FILE, PNG)), FAST_FORM)],
)
def test_fast_path_requests_are_counted_under_their_route(client, path, body, headers):
    series = f'cvae_http_requests_total{{method="POST",route="{path}",status="200"}}'

    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(series):
                return float(line.split()[-1])
        return 0.0

    before = count()
    assert client.post(path, content=body, headers=headers).status_code == 200
    assert count() == before + 1


def test_other_methods_and_paths_pass_through(client):
    assert client.get("/generate").status_code == 405
    slash = client.post("/generate/", content=b'{"digit": 1}', headers=FAST, follow_redirects=False)
    assert slash.status_code == 307  # FastAPI's redirect, as before


# --- /encode --------------------------------------------------------------------------------------------------


def test_plain_multipart_takes_the_fast_path_and_anything_else_the_route(client, encode_route_calls):
    body = form((FILE, PNG), (DIGIT, b"1"))
    assert client.post("/encode", content=body, headers=FAST_FORM).status_code == 200
    assert encode_route_calls == []
    assert client.post("/encode", content=body, headers=ROUTE_FORM).status_code == 200
    assert encode_route_calls == [1]
    invalid = client.post("/encode", content=form((FILE, PNG), (DIGIT, b"12")), headers=FAST_FORM)
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["loc"] == ["body", "digit"]  # the service's
    both = client.post("/encode", content=form((FILE, PNG), (LABEL, b"1"), (DIGIT, b"1")), headers=FAST_FORM)
    assert both.status_code == 422 and "not both" in both.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        form((FILE, PNG)),
        form((FILE, PNG), (DIGIT, b"7")),
        form((FILE, PNG), (LABEL, b"7")),
        form((FILE, PNG), (LABEL, b"7"), (DIGIT, b"7")),
        form((DIGIT, b"0"), (FILE, PNG)),
        form((FILE, PNG), end=b"--"),  # no line end after the close delimiter
        form((FILE.split("\r\n")[0], PNG)),  # no Content-Type in the part
        form((FILE, b"not an image")),  # 415 from the service
        form((FILE, encoded(drawing().point(lambda v: 255)))),  # 422: no ink
        form((FILE, PNG[: len(PNG) // 2])),  # 400: truncated
        form((FILE, b"")),
        form((FILE, PNG), (DIGIT, b"12")),  # 422 from FastAPI
        form((FILE, PNG), (DIGIT, b" 3")),
        form((FILE, PNG), (DIGIT, b"")),
        form((FILE, PNG), (DIGIT, b"three")),
        form((DIGIT, b"3")),  # no file
        form(('Content-Disposition: form-data; name="file"', PNG)),  # a field, not a file
        form((FILE, PNG), ('Content-Disposition: form-data; name="other"', b"x")),
        form((FILE, PNG), (FILE, PNG)),
        form((FILE + "\r\nContent-Transfer-Encoding: binary", PNG)),
        form(('Content-Disposition: form-data; filename="d.png"; name="file"', PNG)),
        b"preamble\r\n" + form((FILE, PNG)),
        form((FILE, PNG), end=b"--\r\nepilogue"),
        form((FILE, PNG), end=b"\r\n"),  # not closed
        form((FILE, PNG)).replace(b"\r\n", b"\n"),
        b"",
    ],
)
def test_the_encode_fast_path_answers_exactly_as_the_route(client, body):
    fast = client.post("/encode", content=body, headers=FAST_FORM)
    route = client.post("/encode", content=body, headers=ROUTE_FORM)
    assert fast.status_code == route.status_code
    assert fast.content == route.content
    assert fast.headers.get("content-type") == route.headers.get("content-type")


def test_the_encode_fast_path_reads_only_the_plainest_form():
    assert parse_upload(form((FILE, PNG), (DIGIT, b"4")), B.encode()) == EncodeForm(file=PNG, digit="4")
    assert parse_upload(form((FILE, PNG), (LABEL, b"Coat")), B.encode()) == EncodeForm(file=PNG, label="Coat")
    assert parse_upload(form((FILE, PNG), (DIGIT, b"")), B.encode()) is None  # invalid: the route says why
    assert parse_upload(form((FILE, b"a\r\n--" + B.encode() + b"x")), B.encode()) is None  # the boundary inside
    assert parse_upload(form((FILE, PNG)), b"other") is None
