"""Access control (app/http/access.py: API keys, the metrics key, rate limits, CORS), request IDs, the headers every
response carries, and the logs' request IDs and JSON lines (app/telemetry/logs.py)."""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import app.http.access
from app.factory import create_app
from app.http.access import Keys, RateLimiter
from app.settings import Settings, read_keys
from app.telemetry.logs import MODEL_ID, REQUEST_ID, JsonFormatter, logging_config
from tests.conftest import drawing, encoded, problem

KEY = "k" * 20 + "-first"
OTHER_KEY = "o" * 20 + "_second"
METRICS_KEY = "m" * 24
PNG = encoded(drawing())
GENERATE = {"digit": 1, "n": 1, "seed": 1}


@pytest.fixture(scope="module")
def locked(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The service with two API keys and a metrics key."""
    settings = Settings(model_dir=tiny_model_dir, api_keys=f"{KEY},{OTHER_KEY}", metrics_api_keys=METRICS_KEY)
    with TestClient(create_app(settings)) as c:
        yield c


def protected_calls(c: TestClient, headers: dict[str, str]) -> list:
    """/generate (fast path and route), /encode (fast path and route) and /model, with these headers."""
    return [
        c.post("/generate", content=json.dumps(GENERATE), headers={"Content-Type": "application/json", **headers}),
        c.post("/generate", json=GENERATE, headers={"Content-Type": "application/json; charset=utf-8", **headers}),
        c.post("/encode", files={"file": ("d.png", PNG, "image/png")}, headers=headers),
        c.post("/encode", files={"file": ("d.png", PNG, "image/png"), "digit": (None, "1")}, headers=headers),
        c.get("/model", headers=headers),
    ]


# --- API keys -------------------------------------------------------------------------------------------------


def test_without_keys_configured_nothing_needs_one(client):
    assert [r.status_code for r in protected_calls(client, {})] == [200] * 5


def test_with_keys_the_api_refuses_a_request_without_one_with_401(locked):
    for r in protected_calls(locked, {}):
        p = problem(r, 401)
        assert "Authorization: Bearer" in p["detail"] and "X-API-Key" in p["detail"]
        assert r.headers["www-authenticate"] == 'Bearer realm="cvae-digits"'


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer " + KEY[:-1]}, {"X-API-Key": KEY + "x"}, {"Authorization": "Basic " + KEY},
     {"X-API-Key": METRICS_KEY}],
    ids=["bearer-short", "header-long", "basic", "metrics-key"],
)  # fmt: skip
def test_with_keys_a_wrong_key_is_a_401(locked, headers):
    for r in protected_calls(locked, headers):
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith('Bearer realm="cvae-digits"')


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {OTHER_KEY}"}, {"X-API-Key": KEY}]
)
def test_with_keys_either_header_and_any_key_opens_the_api(locked, headers):
    assert [r.status_code for r in protected_calls(locked, headers)] == [200] * 5


def test_with_keys_probes_pages_and_docs_stay_open(locked):
    for path in ("/livez", "/readyz", "/", "/docs", "/openapi.json", "/static/page.js"):
        assert locked.get(path).status_code == 200, path


def test_metrics_take_their_own_key_when_one_is_set(locked, client):
    assert client.get("/metrics").status_code == 200  # no metrics key configured: open
    problem(locked.get("/metrics"), 401)
    assert locked.get("/metrics", headers={"X-API-Key": KEY}).status_code == 401  # an API key is not a metrics key
    r = locked.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert r.status_code == 200 and 'route="/generate",status="401"' in r.text  # refusals counted under their route


def test_keys_are_compared_by_digest_and_every_key_is_tried(monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = app.http.access.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app.http.access.hmac, "compare_digest", counting)
    keys = Keys.of((KEY, OTHER_KEY, METRICS_KEY))
    assert keys.accepts(KEY.encode()) and not keys.accepts(b"nope")
    assert len(compared) == 6 and all(len(a) == len(b) == 32 for a, b in compared)


def test_keys_come_from_a_list_or_from_a_file(tmp_path):
    assert read_keys(f" {KEY} , {OTHER_KEY},", "X") == (KEY, OTHER_KEY)
    secret = tmp_path / "keys"
    secret.write_text(f"{KEY}\n{OTHER_KEY},{METRICS_KEY}\n\n")
    assert read_keys(str(secret), "X") == (KEY, OTHER_KEY, METRICS_KEY)
    assert read_keys("", "X") == ()


@pytest.mark.parametrize("value", ["short", "has space in it, really long", "/nowhere/keys", f"{KEY},tiny"])
def test_an_unusable_keys_setting_stops_the_service_at_start_up(value):
    with pytest.raises(ValidationError) as e:
        Settings(api_keys=value)
    assert "CVAE_API_KEYS" in str(e.value)
    assert all(key not in str(e.value) for key in value.split(",") if not key.startswith("/"))  # keys never printed


def test_the_keys_are_not_shown_with_the_settings():
    settings = Settings(api_keys=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


# --- rate limits ----------------------------------------------------------------------------------------------


def test_rate_limits_are_off_by_default(client):
    assert all(client.post("/generate", json=GENERATE).status_code == 200 for _ in range(30))


def test_a_client_over_its_rate_is_refused_with_429_and_retry_after(tiny_model_dir):
    settings = Settings(model_dir=tiny_model_dir, rate_limit=0.5, rate_burst=3, api_keys=KEY + "," + OTHER_KEY)
    with TestClient(create_app(settings)) as c:
        mine = {"X-API-Key": KEY}
        assert [c.post("/generate", json=GENERATE, headers=mine).status_code for _ in range(3)] == [200] * 3
        r = c.post("/encode", files={"file": ("d.png", PNG, "image/png")}, headers=mine)
        p = problem(r, 429)
        assert r.headers["retry-after"] == "2" and "0.5 per second" in p["detail"]
        assert c.post("/generate", json=GENERATE, headers={"X-API-Key": OTHER_KEY}).status_code == 200  # its own
        assert c.get("/model", headers=mine).status_code == 200  # only the model's work is limited
        assert c.get("/livez").status_code == 200


def test_the_rate_limiter_refills_and_forgets_the_least_recent_clients(monkeypatch):
    limiter = RateLimiter(rate=2.0, burst=2)
    assert [limiter.wait("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.wait("a", 0.5) == 0.0  # one token back after half a second
    monkeypatch.setattr(app.http.access, "MAX_CLIENTS", 3)
    for client in "bcde":
        limiter.wait(client, 1.0)
    assert list(limiter.buckets) == ["c", "d", "e"]


# --- CORS -----------------------------------------------------------------------------------------------------


def test_no_cors_headers_by_default(client):
    r = client.post("/generate", json=GENERATE, headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_the_listed_origins_and_answers_their_preflight_without_a_key(tiny_model_dir):
    origin = "https://app.example"
    settings = Settings(model_dir=tiny_model_dir, cors_origins=f"{origin}, https://other.example", api_keys=KEY)
    with TestClient(create_app(settings)) as c:
        asks = {"Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type"}  # fmt: skip
        preflight = c.options("/generate", headers=asks)
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
        refused = c.post("/generate", json=GENERATE, headers={"Origin": origin})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
        ok = c.post("/generate", json=GENERATE, headers={"Origin": origin, "X-API-Key": KEY})
        assert ok.status_code == 200 and "X-Seed" in ok.headers["access-control-expose-headers"]
        stranger = c.post("/generate", json=GENERATE, headers={"Origin": "https://evil.example", "X-API-Key": KEY})
        assert "access-control-allow-origin" not in stranger.headers


def test_an_origin_with_a_path_is_not_an_origin():
    with pytest.raises(ValidationError):
        Settings(cors_origins="https://app.example/page")


# --- request IDs and headers on every response ----------------------------------------------------------------


def every_kind_of_response(c: TestClient, headers: dict[str, str]) -> list:
    big = {"Content-Type": "application/json", "Content-Length": "999999999"}
    return [
        c.get("/livez", headers=headers),
        c.post("/generate", json=GENERATE, headers=headers),
        c.post("/generate", content=b"{", headers={"Content-Type": "application/json", **headers}),
        c.post("/encode", files={"file": ("d.png", PNG, "image/png")}, headers=headers),
        c.get("/nope", headers=headers),
        c.post("/generate", content=b"{}", headers={**big, **headers}),  # 413 from the body limit
        c.get("/static/page.js", headers=headers),
    ]


def test_every_response_carries_a_request_id_and_nosniff(client):
    responses = every_kind_of_response(client, {})
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids) and all(8 < len(i) < 40 for i in ids)
    assert all(r.headers["x-content-type-options"] == "nosniff" for r in responses)
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 400, 404, 413]


def test_a_sane_request_id_from_the_client_is_kept(client):
    given = "3f1c2b9e-8d4a-4c1e-9f6b-2a7d5e0c1b3a"
    assert all(r.headers["x-request-id"] == given for r in every_kind_of_response(client, {"X-Request-ID": given}))


@pytest.mark.parametrize("given", [b"a" * 129, b"two words", b"semi;colon", b'quote"d', "é".encode(), b""])
def test_an_insane_request_id_is_replaced(client, given):
    r = client.get("/livez", headers={"X-Request-ID": given})
    assert r.headers["x-request-id"].encode() != given and 8 < len(r.headers["x-request-id"]) < 40


def test_access_lines_carry_the_request_id_and_the_model_that_answered(client, capsys):
    logging.config.dictConfig(logging_config("info"))
    try:
        logger = logging.getLogger("uvicorn.access")
        token, model = REQUEST_ID.set("req-42"), MODEL_ID.set("cvae-0123")
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/generate", "1.1", 200)
        REQUEST_ID.reset(token)
        MODEL_ID.reset(model)
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/livez", "1.1", 200)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    lines = capsys.readouterr().out.strip().splitlines()[-2:]  # uvicorn's access lines go to stdout
    assert '"POST /generate HTTP/1.1" 200' in lines[0] and lines[0].endswith("request_id=req-42 model_id=cvae-0123")
    assert lines[1].endswith("request_id=- model_id=-")  # no model answered /livez


def test_json_log_lines_are_one_object_each_with_the_access_fields():
    formatter = JsonFormatter()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/livez", "1.1", 200), None)  # fmt: skip
    record.request_id = "abc"
    entry = json.loads(formatter.format(record))
    assert entry["request_id"] == "abc" and entry["status"] == 200 and entry["path"] == "/livez"
    assert entry["level"] == "info" and entry["logger"] == "uvicorn.access" and entry["time"].endswith("+00:00")
    try:
        raise ValueError("one\ntwo")
    except ValueError:
        import sys

        error = logging.LogRecord("app", logging.ERROR, __file__, 1, "failed: %s", ("x\ny",), sys.exc_info())
    text = formatter.format(error)
    assert "\n" not in text and "ValueError" in json.loads(text)["exception"]
