"""Errors as the protocol has them: under /v2, every problem+json answer (a route's, or a refusal sent before any
route ran: 401, 408, 413, 429, 503) leaves as {"error": detail}, with its status and headers (Retry-After,
WWW-Authenticate) unchanged. Pure ASGI; other paths pass through untouched."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import paths
from app.http.problems import PROBLEM_MEDIA_TYPE

PROBLEM = PROBLEM_MEDIA_TYPE.encode()


class ProtocolErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != paths.V2 and not path.startswith(paths.V2 + "/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None

        async def send_error(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if dict(message.get("headers", ())).get(b"content-type", b"").split(b";")[0] == PROBLEM:
                    start = message
                    return
            elif start is not None and message["type"] == "http.response.body":
                first, start = start, None
                if message.get("more_body", False):  # not one of the service's problems (each is one message)
                    await send(first)
                    await send(message)
                    return
                body = as_error(message.get("body", b""))
                headers = [(k, v) for k, v in first.get("headers", ()) if k not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**first, "headers": headers})
                await send({**message, "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_error)


def as_error(problem: bytes) -> bytes:
    """A problem+json body -> {"error": its detail}."""
    try:
        detail = json.loads(problem).get("detail") or ""
    except (ValueError, AttributeError):
        detail = problem.decode("utf-8", "replace")
    return json.dumps({"error": detail}, separators=(",", ":")).encode()
