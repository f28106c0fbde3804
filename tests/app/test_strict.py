"""Strict parsing (app/api/parsing.py) and small error bodies, on both the fast path and the FastAPI routes: media types
(415), repeated JSON keys and form fields (422 naming them), malformed JSON of every kind (400, never 500), and error
bodies that stay small and cheap whatever the request."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.core.errors import MAX_ERRORS, MAX_TEXT
from tests.conftest import D, drawing, encoded, problem

FAST = {"Content-Type": "application/json"}  # the fast path takes exactly this
ROUTE = {"Content-Type": "application/json; charset=utf-8"}  # the FastAPI route
BOTH = pytest.mark.parametrize("headers", [FAST, ROUTE], ids=["fast", "route"])
PNG = encoded(drawing())
MAX_ERROR_BODY = 4096  # bytes: what any problem may take, whatever the request


def small_problem(r, status: int) -> dict:
    assert len(r.content) <= MAX_ERROR_BODY, len(r.content)
    return problem(r, status)


# --- media types ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/json", "text/plain", "application/jsonx", "multipart/form-data; boundary=x", None]
)
def test_generate_refuses_a_body_not_declared_as_json_with_415(client, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = client.post("/generate", content=b'{"digit": 3}', headers=headers)
    assert "application/json" in small_problem(r, 415)["detail"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
def test_generate_takes_json_with_parameters_and_json_suffixes(client, content_type):
    r = client.post("/generate", content=b'{"digit": 3, "n": 1}', headers={"Content-Type": content_type})
    assert r.status_code == 200


def test_a_content_type_quoted_in_a_415_is_truncated(client):
    r = client.post("/generate", content=b"{}", headers={"Content-Type": "text/" + "x" * 5000})
    assert len(small_problem(r, 415)["detail"]) < 300


# --- repeated keys and fields ---------------------------------------------------------------------------------


@BOTH
def test_a_repeated_json_key_is_a_422_naming_it(client, headers):
    r = client.post("/generate", content=b'{"digit": 3, "n": 2, "digit": 4}', headers=headers)
    body = small_problem(r, 422)
    assert body["errors"] == [{"loc": ["body", "digit"], "msg": "key 'digit' is given more than once; give it once",
                               "type": "duplicate_key"}]  # fmt: skip
    assert "digit" in body["detail"]


@BOTH
def test_a_repeated_key_in_a_nested_object_is_refused_too(client, headers):
    r = client.post("/generate", content=b'{"digit": 3, "latent": [{"a": 1, "a": 2}]}', headers=headers)
    assert small_problem(r, 422)["errors"][0]["type"] == "duplicate_key"


def test_both_paths_answer_a_repeated_key_alike(client):
    body = b'{"n": 1, "digit": 3, "n": 2, "seed": 1, "seed": 2}'
    fast, route = (client.post("/generate", content=body, headers=h) for h in (FAST, ROUTE))
    assert fast.status_code == route.status_code == 422 and fast.content == route.content
    assert [e["loc"] for e in fast.json()["errors"]] == [["body", "n"], ["body", "seed"]]


def form(*parts: tuple[str, bytes]) -> bytes:
    body = b"".join(b"--b\r\n" + head.encode() + b"\r\n\r\n" + content + b"\r\n" for head, content in parts)
    return body + b"--b--\r\n"


FILE = 'Content-Disposition: form-data; name="file"; filename="d.png"'
DIGIT = 'Content-Disposition: form-data; name="digit"'
FORM = {"Content-Type": "multipart/form-data; boundary=b"}


@pytest.mark.parametrize(
    ("parts", "named"),
    [
        (((FILE, PNG), (FILE, PNG)), {("file", "repeated_field")}),
        (((FILE, PNG), (DIGIT, b"1"), (DIGIT, b"2")), {("digit", "repeated_field")}),
        (((FILE, PNG), ('Content-Disposition: form-data; name="other"', b"x")), {("other", "extra_forbidden")}),
        (((FILE, PNG), (FILE, PNG), (DIGIT, b"1"), (DIGIT, b"1")), {("file", "repeated_field"),
                                                                     ("digit", "repeated_field")}),
    ],
)  # fmt: skip
def test_a_repeated_or_unknown_form_field_is_a_422_naming_it(client, parts, named):
    body = small_problem(client.post("/encode", content=form(*parts), headers=FORM), 422)
    assert {(e["loc"][1], e["type"]) for e in body["errors"]} == named


def test_a_form_of_many_parts_is_refused_before_it_is_read_whole(client):
    parts = [(f'Content-Disposition: form-data; name="f{i}"', b"x") for i in range(50)]
    small_problem(client.post("/encode", content=form((FILE, PNG), *parts), headers=FORM), 400)


# --- malformed JSON -------------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b'{"digit": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"digit": 1, "seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"digit": 1, "n": "\xff\xfe"}', "not valid JSON"),
        (b'{"digit": 3,', "not valid JSON"),
    ],
    ids=["deep-array", "deep-field", "long-number", "not-utf8", "cut"],
)
def test_malformed_json_of_every_kind_is_a_400_never_a_500(client, headers, body, words):
    assert words in small_problem(client.post("/generate", content=body, headers=headers), 400)["detail"]


# --- small, cheap error bodies --------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "payload",
    [
        {"digit": 1, "latent": [float("nan")] * 5000},
        {"digit": 1, "latent": [[float("nan")] * D] * 256},
        {"digit": [12] * 32},
        {"digit": 1, **{f"field{i}": i for i in range(3000)}},
        {"digit": "x" * 30_000},
        {"x" * 30_000: 1, "digit": 1},
    ],
    ids=["nans", "nan-vectors", "bad-digits", "many-fields", "long-string", "long-key"],
)
def test_an_invalid_body_gets_a_small_422_with_at_most_a_few_errors(client, headers, payload):
    body = json.dumps(payload).encode()  # NaN as JSON's extension NaN, which Python reads
    r = client.post("/generate", content=body, headers=headers)
    problem_body = small_problem(r, 422)
    assert 1 <= len(problem_body["errors"]) <= MAX_ERRORS
    for error in problem_body["errors"]:
        assert all(len(str(part)) <= MAX_TEXT for part in error["loc"])
        assert "input" not in error


def test_more_errors_than_listed_are_counted(client):
    r = client.post("/generate", json={"digit": 1, **{f"f{i}": i for i in range(MAX_ERRORS + 2)}})
    body = small_problem(r, 422)
    assert len(body["errors"]) == MAX_ERRORS and body["error_count"] == MAX_ERRORS + 2
    assert "and" in body["detail"] and "more" in body["detail"]


@BOTH
def test_an_object_of_many_keys_is_one_error(client, headers):
    body = json.dumps({"digit": 1, **{f"f{i}": i for i in range(500)}}).encode()
    problem_body = small_problem(client.post("/generate", content=body, headers=headers), 422)
    assert (
        len(problem_body["errors"]) == 1 and "501 keys ('digit', 'f0', 'f1', ...)" in problem_body["errors"][0]["msg"]
    )


def test_a_large_invalid_body_keeps_the_event_loop_free(client):
    """A body of NaNs as large as /generate takes: answered in a few tens of milliseconds, and /livez, asked
    meanwhile over and over from another thread, never waits long (it shares the event loop)."""
    limit = client.app.state.service.runtime.body_limits["/generate"]
    count = (limit - 100) // 4
    body = b'{"digit": 1, "latent": [' + b",".join([b"NaN"] * count) + b"]}"
    assert limit - 200 < len(body) <= limit
    stop = threading.Event()
    livez: list[float] = []

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            assert client.get("/livez").status_code == 200
            livez.append(time.perf_counter() - started)

    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(probe)
        time.sleep(0.05)
        took = []
        for headers in (FAST, ROUTE) * 3:
            started = time.perf_counter()
            answer = small_problem(client.post("/generate", content=body, headers=headers), 422)
            took.append(time.perf_counter() - started)
            assert len(answer["errors"]) == 1 and "error_count" not in answer, answer  # one error, not one per NaN
        stop.set()
        probing.result()
    # Before errors were capped, a body like it took seconds (one error per NaN) and so did /livez meanwhile: each
    # answer now carries one error however many NaNs (a count, not the clock), and /livez was answered throughout.
    assert max(livez) < 2.0 and len(livez) >= len(took), (took, max(livez))
