"""The cheapest operations' requests without FastAPI's per-request machinery, for the requests that need none of it:
/generate's JSON body sent as exactly application/json and valid (by the operation's own schema), or /encode's upload
in the plainest multipart form, with no query string or only ?model=NAME. Everything else goes on to FastAPI with its
body replayed, so the routes stay the one definition of each endpoint and its errors. What counts as plainest, and
why it pays: docs/architecture.md."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import PLAIN_MODEL_QUERY, model_in_query, runtime_of
from app.api.parsing import PARSED_JSON, parse_json
from app.api.routes.operations import respond
from app.core.errors import ServiceError
from app.http.handlers import problem_response
from app.operations import encode, generate
from app.operations.encode import EncodeForm
from app.operations.generate import GenerateRequest
from app.serving.state import ServiceState

GENERATE = generate.OPERATION.path
ENCODE = encode.OPERATION.path

# What the fast path does with a valid request: the routes' own answers (route_answers), or a benchmark's constant
# ones.
GenerateAnswer = Callable[[Scope, GenerateRequest, str | None], Awaitable[Response]]
EncodeAnswer = Callable[[Scope, EncodeForm], Awaitable[Response]]
BOUNDARY = re.compile(rb"multipart/form-data; *boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})")  # RFC 2046's bchars
DISPOSITION = re.compile(rb'form-data; *name="(file|label|digit)"(; *filename="[^"\\\r\n]*")?')


class FastPath:
    """The fast path: generate and encode answer the valid requests it reads (their errors rendered by the caller as
    the handlers render them)."""

    def __init__(self, app: ASGIApp, *, generate: GenerateAnswer, encode: EncodeAnswer) -> None:
        self.app = app
        self.answer_generate = generate
        self.answer_encode = encode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else None
        if path != GENERATE and path != ENCODE:
            await self.app(scope, receive, send)
            return
        query = scope["query_string"]
        if query and not PLAIN_MODEL_QUERY.fullmatch(query):  # the route reads any other query string
            await self.app(scope, receive, send)
            return
        content_type: bytes | None = None
        accept: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"accept" and accept is None:
                accept = value.decode("latin-1")
        boundary: bytes | None = None
        if path == ENCODE and content_type is not None and (m := BOUNDARY.fullmatch(content_type)):
            boundary = m.group(1)
        elif path == ENCODE or content_type != b"application/json":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:  # the client went away: nothing to answer
            return
        response: Response | None = None
        if boundary is None:
            if not body:  # to the route, which names the missing field
                await self.app(scope, replay(body, receive), send)
                return
            try:
                data = parse_json(body)
            except ServiceError as e:  # malformed, or a repeated key: as the route (StrictRoute) answers it
                response = problem_response(e)
            else:
                try:
                    request = GenerateRequest.model_validate(data)
                except ValidationError:  # FastAPI says why, from the value parsed here (not parsed again)
                    scope[PARSED_JSON] = data
                else:
                    response = await answered(self.answer_generate(scope, request, accept))
        elif (upload := parse_upload(body, boundary)) is not None:
            response = await answered(self.answer_encode(scope, upload))
        if response is None:
            await self.app(scope, replay(body, receive), send)
        else:
            await response(scope, receive, send)


def route_answers(state: ServiceState) -> tuple[GenerateAnswer, EncodeAnswer]:
    """The routes' own answers (routes.operations.respond) by the runtime serving the model asked for (?model=, else
    the default) in `state` when each is asked."""

    async def route_generate(scope: Scope, request: GenerateRequest, accept: str | None) -> Response:
        model = model_in_query(scope["query_string"])
        return await respond(runtime_of(state, model), generate.OPERATION, request, accept)

    async def route_encode(scope: Scope, form: EncodeForm) -> Response:
        model = model_in_query(scope["query_string"])
        return await respond(runtime_of(state, model), encode.OPERATION, form, None)

    return route_generate, route_encode


async def answered(answer: Awaitable[Response]) -> Response:
    """An answer, or its ServiceError rendered as the handlers render it."""
    try:
        return await answer
    except ServiceError as e:
        return problem_response(e)


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_upload(body: bytes, boundary: bytes) -> EncodeForm | None:
    """An /encode multipart body (RFC 7578) in its plainest form, valid by the form's schema -> the form; None for
    anything else. Its label (a class number or name) is checked against the model by the operation, as the route's
    is."""
    delimiter = b"\r\n--" + boundary
    parts = (b"\r\n" + body).split(delimiter)
    if parts[0] or parts[-1] not in (b"--", b"--\r\n"):  # no preamble; the close delimiter, then nothing
        return None
    data: bytes | None = None
    fields: dict[str, str] = {}
    for part in parts[1:-1]:
        head, found, content = part.partition(b"\r\n\r\n")
        if not found or not head.startswith(b"\r\n"):
            return None
        disposition = None
        for line in head[2:].split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-disposition" and disposition is None:
                disposition = DISPOSITION.fullmatch(value.strip())
            elif name != b"content-type":
                return None
        if disposition is None:
            return None
        is_file = disposition.group(2) is not None  # a part with a filename is a file, even an empty one
        if disposition.group(1) == b"file" and is_file and data is None:
            data = content
        elif disposition.group(1) != b"file" and not is_file and (field := disposition.group(1).decode()) not in fields:
            try:
                fields[field] = content.decode()
            except UnicodeDecodeError:
                return None
        else:
            return None
    if data is None:
        return None
    try:
        return EncodeForm.model_validate({"file": data, **fields})
    except ValidationError:  # the route says why
        return None


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives the body already read, then whatever the connection says next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
