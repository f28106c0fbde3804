"""POST /generate without FastAPI's per-request machinery, for the requests that need none of it.

FastAPI's handling of a route (a Request object, dependency solving, validating the body field, its exception
wrappers) costs about a quarter of the cheapest FastAPI endpoint's CPU on this machine (measured: ~50 of ~220 µs
per request; tests/bench/serve.py's floor). This middleware, the innermost, answers POST /generate itself when the
body is sent as exactly `Content-Type: application/json` and validates as GenerateRequest the way FastAPI
validates it (json.loads, then the model in Python mode), with the route's own code (routes.generate.respond) and
its errors rendered as the handlers render them. Every other request, including every body that does not parse or
validate, goes on to FastAPI with its body replayed: the errors users see are FastAPI's own, and the route (its
OpenAPI description included) stays the one definition of /generate.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.dependencies import runtime_of
from app.error_handlers import problem_response
from app.errors import ServiceError
from app.routes import generate
from app.schemas import GenerateRequest

PATH = "/generate"
ROUTE = SimpleNamespace(path=PATH)  # what the metrics middleware labels requests by (scope["route"].path)


class GenerateFastPath:
    """The fast path; answer() is what it does with a valid request (tests/bench/apps.py's floor-asgi overrides it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        content_type: bytes | None = None
        accept: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"accept" and accept is None:
                accept = value.decode("latin-1")
        if content_type != b"application/json":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = GenerateRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # not JSON (JSONDecodeError), or not valid: FastAPI says why
            await self.app(scope, replay(body, receive), send)
            return
        response = await self.answer(scope, request, accept)
        await response(scope, receive, send)

    async def answer(self, scope: Scope, request: GenerateRequest, accept: str | None) -> Response:
        """The route's answer (routes.generate.respond), its errors rendered as the handlers render them."""
        scope["route"] = ROUTE
        try:
            return await generate.respond(runtime_of(scope["app"]), request, accept)
        except ServiceError as e:
            return problem_response(e)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives the body already read, then whatever the connection says next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
