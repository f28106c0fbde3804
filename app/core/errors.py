"""The one domain error and the one error body (RFC 9457 problem details); unavailable() is the one way to refuse
with 503 and Retry-After. The ground floor: every room may import it, it imports nothing of the app and no
framework (the inference process builds these errors too)."""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

PROBLEM_TYPE_PREFIX = "tag:cvae-digits,2025:problems/"  # a URI that names, and is not meant to be fetched
# An error body stays small whatever the request: at most MAX_ERRORS field errors (with `error_count` saying how
# many there were), and no text from the request longer than MAX_TEXT characters; the detail at most MAX_DETAIL.
MAX_ERRORS = 10
MAX_TEXT = 120
MAX_DETAIL = 1000


class ServiceError(Exception):
    """A request the service cannot satisfy; carries everything its problem+json response needs.

    `kind` becomes the problem type URI (tag:cvae-digits,2025:problems/<kind>); None means "about:blank",
    for plain HTTP errors whose status says it all. `errors` lists field errors ({loc, msg, type}); the body shows
    the first MAX_ERRORS of them and, when there were more, `error_count`.
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
            "detail": truncate(self.detail, MAX_DETAIL),
        }
        if self.errors is not None:
            problem["errors"] = self.errors[:MAX_ERRORS]
            if len(self.errors) > MAX_ERRORS:
                problem["error_count"] = len(self.errors)
        return problem

    def body_bytes(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()


def unavailable(detail: str, *, kind: str, title: str | None = None, retry_after: float = 1.0) -> ServiceError:
    """A 503 the client should retry, after `retry_after` seconds: Retry-After in whole seconds, at least 1."""
    return ServiceError(503, detail, kind=kind, title=title, headers={"Retry-After": retry_after_value(retry_after)})


def unknown_model(detail: str) -> ServiceError:
    """The one 404 for a model the service does not serve (?model=NAME, or a protocol model's name)."""
    return ServiceError(404, detail, kind="unknown-model", title="Unknown model")


def invalid(detail: str, errors: list[dict[str, Any]]) -> ServiceError:
    """The one 422 for a request the service can read but not do, naming each field at fault (field_error)."""
    return ServiceError(422, detail, kind="validation-error", title="Invalid request", errors=errors)


def retry_after_value(seconds: float) -> str:
    """A Retry-After header's value for a wait of `seconds`: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def field_error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    """One entry of a problem's `errors`; strings in loc and msg (which may quote the request) are truncated."""
    return {
        "loc": [part if isinstance(part, int) else truncate(str(part)) for part in loc],
        "msg": truncate(msg, MAX_DETAIL // 4),
        "type": truncate(type_),
    }


def truncate(text: str, limit: int = MAX_TEXT) -> str:
    """text, cut to `limit` characters (ending in an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def summary(errors: list[dict[str, Any]], shown: int = 5) -> str:
    """A problem's detail from its field errors: "loc: msg" of the first few, then how many more."""
    text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:shown])
    if len(errors) > shown:
        text += f"; and {len(errors) - shown} more"
    return text


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
