"""The problem+json answer on the HTTP side: its media type, and send_problem() for a middleware that answers
without a framework around it. The error itself lives on the ground floor (app/core/errors.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.errors import ServiceError

if TYPE_CHECKING:
    from starlette.types import Send

PROBLEM_MEDIA_TYPE = "application/problem+json"


async def send_problem(send: Send, error: ServiceError, close: bool = True) -> None:
    """Sends a problem response from a middleware (no framework around it); close: ask for the connection to be
    closed after it (the request's body, if any, left unread)."""
    body = error.body_bytes()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
