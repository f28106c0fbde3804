"""The one domain error and the one error body (RFC 9457 problem details). No HTTP framework here."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "tag:cvae-digits,2025:problems/"  # a URI that names, and is not meant to be fetched


class ServiceError(Exception):
    """A request the service cannot satisfy; carries everything its problem+json response needs.

    `kind` becomes the problem type URI (tag:cvae-digits,2025:problems/<kind>); None means "about:blank",
    for plain HTTP errors whose status says it all. `errors` lists field errors ({loc, msg, type}).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title or _phrase(status)
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.kind if self.kind else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            problem["errors"] = self.errors
        return problem

    def body_bytes(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()


def field_error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
