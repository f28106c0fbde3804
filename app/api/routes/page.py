"""GET / (the page a person opens first), GET /docs (Swagger UI) and /static: files shipped in app/static, so
that nothing is loaded from another origin. Both pages run under a Content-Security-Policy that allows only the
service's own origin: every script and style is a file here, none is inline."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from app import paths

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

# img-src: blob: for the PNGs the page receives from /generate, data: for the icons inside swagger-ui.css.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {  # and X-Content-Type-Options: nosniff, as on every response (app/http/middleware.py)
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (StaticFiles answers a matching If-None-Match with 304): the names carry no hash.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _html(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get(paths.PAGE)
async def page() -> FileResponse:
    return _html("index.html")


@router.get(paths.DOCS)
async def docs() -> FileResponse:
    return _html("docs.html")


class StaticAssets(StaticFiles):
    """app/static, with the pages' security headers on every file. Mount it at paths.STATIC."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC_DIR)

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response
