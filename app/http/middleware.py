"""Pure ASGI middleware (no per-request tasks or threads): request IDs and the headers every response carries, and the
request body limit; ResponseStatus, the send channel that remembers whether (and how) a response started."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ServiceError
from app.http.problems import send_problem
from app.telemetry.logs import REQUEST_ID

# A request ID a client may choose (a UUID, a ULID, a trace ID): visible ASCII without separators, at most 128.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=@/-]{1,128}")
NOSNIFF = (b"x-content-type-options", b"nosniff")


class RequestContextMiddleware:
    """The outermost middleware: every response carries X-Request-ID (the client's, when it sent a sane one, else
    one made here: a random prefix per process and a counter) and X-Content-Type-Options: nosniff; the ID is the
    request's in the logs (app/telemetry/logs.py) while it is handled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if SANE_REQUEST_ID.fullmatch(value):
                    request_id = value
                break
        if request_id is None:
            request_id = f"{self._prefix}-{next(self._counter):x}".encode()
        added = [(b"x-request-id", request_id), NOSNIFF]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        token = REQUEST_ID.set(request_id.decode("ascii"))
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_ID.reset(token)


class ResponseStatus:
    """A send channel that passes messages on and remembers the status of the response it started."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None  # None until the response starts

    @property
    def started(self) -> bool:
        return self.status is not None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class BodyTooLarge(HTTPException):
    """Raised from the receive channel when a body grows past the limit. An HTTPException, so that the
    framework's body parsing lets it through to the exception handlers (any other error there becomes a 400)."""

    kind = "body-too-large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuses request bodies over limit_of(path, query string) bytes with 413, counting the bytes as they arrive: a
    Content-Length over the limit is refused at once, but a missing or lying one (chunked) cannot slip by. limit_of is
    given by create_app (a path's limit depends on the model asked for, which the lifespan loads)."""

    def __init__(self, app: ASGIApp, *, limit_of: Callable[[str, bytes], int]) -> None:
        self.app = app
        self.limit_of = limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["path"], scope.get("query_string", b""))
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > limit:
                    await send_problem(send, _too_large(BodyTooLarge(limit)))
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        response = ResponseStatus(send)
        try:
            await self.app(scope, counting_receive, response)
        except BodyTooLarge as e:  # raised where no handler caught it
            if response.started:
                raise
            await send_problem(send, _too_large(e))


def _too_large(e: BodyTooLarge) -> ServiceError:
    return ServiceError(413, e.detail, kind=e.kind)
