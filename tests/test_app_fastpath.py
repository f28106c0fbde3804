"""app/fastpath.py: POST /generate answered without FastAPI's per-request machinery when the body is plain valid
JSON, and by the FastAPI route otherwise. Both must answer every request byte for byte alike."""

from __future__ import annotations

import pytest

import app.routes.generate as generate_route

FAST = {"Content-Type": "application/json"}
ROUTE = {"Content-Type": "application/json; charset=utf-8"}  # also JSON to FastAPI, but not taken by the fast path


@pytest.fixture
def route_calls(monkeypatch) -> list[int]:
    """Counts the requests the FastAPI route answers (the fast path never calls its runtime_of)."""
    calls: list[int] = []
    original = generate_route.runtime_of

    def counting(request):
        calls.append(1)
        return original(request)

    monkeypatch.setattr(generate_route, "runtime_of", counting)
    return calls


def test_plain_json_takes_the_fast_path_and_anything_else_the_route(client, route_calls):
    body = b'{"digit": 3, "n": 2, "seed": 1}'
    assert client.post("/generate", content=body, headers=FAST).status_code == 200
    assert route_calls == []
    assert client.post("/generate", content=body, headers=ROUTE).status_code == 200
    assert route_calls == [1]
    invalid = client.post("/generate", content=b'{"digit": 3, "n": 0}', headers=FAST)
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["loc"] == ["body", "n"]  # FastAPI's own words


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
        (b'{"digit": "4"}', None),  # strict: no string to int
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


def test_fast_path_requests_are_counted_under_the_route(client):
    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('cvae_http_requests_total{method="POST",route="/generate",status="200"}'):
                return float(line.split()[-1])
        return 0.0

    before = count()
    client.post("/generate", content=b'{"digit": 1, "n": 1}', headers=FAST)
    assert count() == before + 1


def test_other_methods_and_paths_pass_through(client):
    assert client.get("/generate").status_code == 405
    slash = client.post("/generate/", content=b'{"digit": 1}', headers=FAST, follow_redirects=False)
    assert slash.status_code == 307  # FastAPI's redirect, as before
