"""The messages between the server and its inference process, and how they travel: a pickle of (class name, fields
by name, payloads as plain tuples) after an 8-byte length. Server -> child: DrawBatch, EncodeBatch, Stop. Child ->
server: Ready (or StartFailed) once, then one reply per batch, in order: Drawn, Encoded or BatchFailed. Ready
carries wire_version(), so that a child running other code is refused. Why this format: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import socket
import struct
from functools import lru_cache
from typing import Any, NamedTuple

from app.engine.interface import Drawing, EncodeResult, GenerateSpec, Stage, Upload
from app.http.problems import ServiceError

HEADER = struct.Struct(">Q")


class WireError(Exception):
    """A frame that is not a message of this module."""


class Refusal(NamedTuple):
    """A ServiceError for one upload, as it crosses the process boundary (field errors and headers do not)."""

    status: int
    kind: str | None
    title: str
    detail: str

    @classmethod
    def of(cls, error: ServiceError) -> Refusal:
        return cls(status=error.status, kind=error.kind, title=error.title, detail=error.detail)

    def to_error(self) -> ServiceError:
        return ServiceError(self.status, self.detail, kind=self.kind, title=self.title)


class Ready(NamedTuple):
    """The child loaded the model and prepared it (Inference.prepare)."""

    version: str  # the child's wire_version()
    model_id: str
    pass_rows: int  # the largest decoder pass prepare() allowed
    score_uploads: int  # the most uploads scored in one pass


class StartFailed(NamedTuple):
    """The child could not load or prepare the model."""

    reason: str


class DrawBatch(NamedTuple):
    batch_id: int
    specs: list[GenerateSpec]
    traceparents: list[str] | None  # a traced batch's jobs' trace contexts: the child times its work; None: untraced


class EncodeBatch(NamedTuple):
    batch_id: int
    uploads: list[Upload]
    traceparents: list[str] | None


class Drawn(NamedTuple):
    """A DrawBatch's answer: each spec's drawing, in order."""

    batch_id: int
    drawings: list[Drawing]
    stages: list[Stage] | None  # the work timed, when the batch was traced


class Encoded(NamedTuple):
    """An EncodeBatch's answer: each upload's result, or the error that upload alone gets."""

    batch_id: int
    outcomes: list[EncodeResult | ServiceError]
    stages: list[Stage] | None


class BatchFailed(NamedTuple):
    """The whole batch failed (an unexpected error; the child goes on)."""

    batch_id: int
    reason: str


class Stop(NamedTuple):
    """Exit after answering what was sent before."""


Message = Ready | StartFailed | DrawBatch | EncodeBatch | Drawn | Encoded | BatchFailed | Stop
MESSAGES: dict[str, type[Message]] = {
    cls.__name__: cls for cls in (Ready, StartFailed, DrawBatch, EncodeBatch, Drawn, Encoded, BatchFailed, Stop)
}
PAYLOADS = (GenerateSpec, Upload, Drawing, EncodeResult, Refusal, Stage)
# The field of a message holding a list of payloads, and their class: each travels as a plain tuple in its class's
# field order (pickling the classes would cost several times more per payload; the order cannot drift from the class).
PAYLOAD_LISTS: dict[type[Message], tuple[str, Any]] = {
    DrawBatch: ("specs", GenerateSpec),
    EncodeBatch: ("uploads", Upload),
    Drawn: ("drawings", Drawing),
}


@lru_cache(maxsize=1)
def wire_version() -> str:
    """A digest of every message's and payload's class name and field names, in order."""
    layout = repr([(cls.__name__, cls._fields) for cls in (*MESSAGES.values(), *PAYLOADS)])
    return hashlib.sha256(layout.encode()).hexdigest()[:16]


def to_wire(message: Message) -> dict[str, Any]:
    """A message's fields by name, its payloads as plain tuples (an upload's error as its Refusal)."""
    fields = message._asdict()
    if isinstance(message, Encoded):
        fields["outcomes"] = [
            ("result", tuple(o)) if isinstance(o, EncodeResult) else ("refusal", tuple(Refusal.of(o)))
            for o in message.outcomes
        ]
    elif (listed := PAYLOAD_LISTS.get(type(message))) is not None:
        fields[listed[0]] = [tuple(p) for p in fields[listed[0]]]
    if fields.get("stages") is not None:
        fields["stages"] = [tuple(s) for s in fields["stages"]]
    return fields


def from_wire(name: str, fields: dict[str, Any]) -> Message:
    cls = MESSAGES[name]
    if cls is Encoded:
        fields["outcomes"] = [
            EncodeResult._make(f) if tag == "result" else Refusal._make(f).to_error() for tag, f in fields["outcomes"]
        ]
    elif (listed := PAYLOAD_LISTS.get(cls)) is not None:
        field, payload = listed
        fields[field] = [payload._make(p) for p in fields[field]]
    if fields.get("stages") is not None:
        fields["stages"] = [Stage._make(s) for s in fields["stages"]]
    return cls(**fields)


def frame(message: Message) -> bytes:
    body = pickle.dumps((type(message).__name__, to_wire(message)), protocol=5)
    return HEADER.pack(len(body)) + body


def parse(body: bytes) -> Message:
    try:
        name, fields = pickle.loads(body)
        return from_wire(name, fields)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise WireError(f"an unreadable frame ({type(e).__name__}: {e})") from e


async def read_message(reader: asyncio.StreamReader) -> Message:
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return parse(await reader.readexactly(size))


def receive_message(sock: socket.socket) -> Message | None:
    """The next message from a blocking socket; None when the other side closed it."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, HEADER.unpack(header)[0])
    return None if body is None else parse(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)
