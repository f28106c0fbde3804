"""GET / (the page), GET /docs and /static without a browser: what is served, with which headers, and that nothing
in it points at another origin. tests/system/test_page_browser.py drives the same page in Chromium."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes.page import STATIC_DIR
from app.factory import create_app
from app.settings import Settings
from tests.conftest import problem

SWAGGER_DIR = STATIC_DIR / "vendor" / "swagger-ui"
TEST_HOOKS = {"grid", "pad", "encode", "inferred", "restyled", "walk", "walk-strip"}
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path):
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as c:
        yield c


class Tags(HTMLParser):
    """Every start tag of a document, as (tag, attributes)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def urls(self) -> list[str]:
        return [a[key] or "" for _, a in self.tags for key in ("src", "href") if key in a]


def csp_directives(header: str) -> dict[str, list[str]]:
    parts = (d.split() for d in header.split(";") if d.strip())
    return {name: values for name, *values in parts}


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_pages_are_html_under_a_csp_that_allows_only_this_origin(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = csp_directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "connect-src", "font-src"):
        assert csp[directive] == ["'self'"], directive  # no 'unsafe-inline', no host, no scheme
    assert set(csp["img-src"]) <= {"'self'", "blob:", "data:"}
    assert csp["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_pages_have_no_inline_script_style_or_handler(client, path):
    tags = Tags(client.get(path).text).tags
    scripts = [a for tag, a in tags if tag == "script"]
    assert scripts and all(a.get("src") for a in scripts), "every script is a file (CSP forbids inline ones)"
    assert not [tag for tag, _ in tags if tag == "style"]
    for tag, attrs in tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], tag


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_every_url_a_page_references_is_this_origins_and_is_served_with_its_type(client, path):
    urls = Tags(client.get(path).text).urls()
    assert urls
    for url in urls:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.I), f"{path} references {url}: another origin"
        target = "/" + url.removeprefix("./")
        r = client.get(target)
        assert r.status_code == 200, target
        if suffix := Path(target).suffix:
            assert CONTENT_TYPES[suffix] in r.headers["content-type"], target
            assert r.headers["x-content-type-options"] == "nosniff"


def test_the_page_carries_the_test_hooks_and_labels_every_control(client):
    tags = Tags(client.get("/").text).tags
    assert {a["data-testid"] for _, a in tags if "data-testid" in a} == TEST_HOOKS
    labelled = {a["for"] for tag, a in tags if tag == "label" and a.get("for")}
    for tag, attrs in tags:
        if tag in ("input", "select", "textarea"):
            assert attrs.get("id") in labelled or "aria-label" in attrs, f"<{tag} id={attrs.get('id')}> has no label"
        if tag == "canvas":
            assert attrs.get("aria-label") and attrs.get("tabindex") == "0", "the pad is named and reachable by Tab"


def test_no_file_the_pages_load_names_another_origin():
    for name in ("index.html", "page.js", "page.css", "docs.html", "docs.js", "docs.css"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"https?://|wss?://", text), name
    css = (SWAGGER_DIR / "swagger-ui.css").read_text()
    assert "@import" not in css
    assert all(u.strip("'\"").startswith("data:") for u in re.findall(r"url\(([^)]*)\)", css))


def test_docs_switch_off_the_outside_validator(client):
    assert re.search(r"validatorUrl:\s*null", client.get("/static/docs.js").text)


def test_vendored_swagger_ui_matches_its_recorded_checksums_and_ships_its_licence():
    record = (SWAGGER_DIR / "README.md").read_text()
    sums = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", record, flags=re.M))
    assert set(sums) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in sums.items():
        assert hashlib.sha256((SWAGGER_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (SWAGGER_DIR / "LICENSE").read_text()
    assert (SWAGGER_DIR / "NOTICE").is_file() and (SWAGGER_DIR / "swagger-ui-bundle.js.LICENSE.txt").is_file()


def test_static_files_revalidate_with_etags(client):
    first = client.get("/static/page.js")
    assert first.headers["cache-control"] == "no-cache" and first.headers["etag"]
    again = client.get("/static/page.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../factory.py", "/static/%2e%2e/factory.py"])
def test_static_answers_only_files_of_its_folder(client, path):
    problem(client.get(path), 404)


def test_static_refuses_other_methods(client):
    problem(client.post("/static/page.js"), 405)


def test_pages_are_not_api_operations_and_redoc_is_not_served(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs"} & set(paths) and not [p for p in paths if p.startswith("/static")]
    problem(client.get("/redoc"), 404)
    problem(client.get("/docs/oauth2-redirect"), 404)


def test_static_files_are_counted_under_one_route_label(client):
    client.get("/static/page.js")
    client.get("/static/missing.js")
    metrics = client.get("/metrics").text
    assert 'route="/static"' in metrics and "page.js" not in metrics and "missing.js" not in metrics


def test_the_pages_sure_threshold_is_the_one_the_figures_measure() -> None:
    """conditions_figures reports how often a reading the page gives as sure is right: the same threshold, or the
    figure is of another page."""
    from training.evaluation.conditions_figures import SURE

    found = re.search(r"^const SURE = ([0-9.]+);", (STATIC_DIR / "page.js").read_text(), re.MULTILINE)
    assert found is not None and float(found.group(1)) == SURE
