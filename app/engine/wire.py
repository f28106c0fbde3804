"""The messages between the server and its inference process, and how they travel: a pickle of (class name, fields
by name, payloads as plain tuples) after an 8-byte length. Server -> child: Batch (of one operation's payloads),
Stop. Child -> server: Ready (or StartFailed) once, then one reply per batch, in order: Done or BatchFailed. Ready
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

from app.core.errors import ServiceError
from app.core.stages import Stage
from app.operations.registry import BY_NAME, OPERATIONS

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


class Batch(NamedTuple):
    """One operation's payloads (app/operations/registry.py, by name), to run together."""

    batch_id: int
    operation: str
    payloads: list[Any]
    traceparents: list[str] | None  # a traced batch's jobs' trace contexts: the child times its work; None: untraced


class Done(NamedTuple):
    """A Batch's answer: each payload's result, or the error that payload alone gets, in order."""

    batch_id: int
    operation: str
    outcomes: list[Any | ServiceError]
    stages: list[Stage] | None  # the work timed, when the batch was traced


class BatchFailed(NamedTuple):
    """The whole batch failed (an unexpected error; the child goes on)."""

    batch_id: int
    reason: str


class Stop(NamedTuple):
    """Exit after answering what was sent before."""


Message = Ready | StartFailed | Batch | Done | BatchFailed | Stop
MESSAGES: dict[str, type[Message]] = {cls.__name__: cls for cls in (Ready, StartFailed, Batch, Done, BatchFailed, Stop)}
# Every payload and result travels as a plain tuple in its class's field order (pickling the classes would cost several
# times more per payload; the order cannot drift from the class).
PAYLOADS = (Refusal, Stage, *(cls for op in OPERATIONS for cls in (op.Payload, op.Result)))


@lru_cache(maxsize=1)
def wire_version() -> str:
    """A digest of every message's and payload's class name and field names, in order."""
    layout = repr([(cls.__name__, cls._fields) for cls in (*MESSAGES.values(), *PAYLOADS)])  # type: ignore[attr-defined]
    return hashlib.sha256(layout.encode()).hexdigest()[:16]


def to_wire(message: Message) -> dict[str, Any]:
    """A message's fields by name, its payloads as plain tuples (an error as its Refusal)."""
    fields = message._asdict()
    if isinstance(message, Batch):
        fields["payloads"] = [tuple(p) for p in message.payloads]
    elif isinstance(message, Done):
        fields["outcomes"] = [
            ("refusal", tuple(Refusal.of(o))) if isinstance(o, ServiceError) else ("result", tuple(o))
            for o in message.outcomes
        ]
    if fields.get("stages") is not None:
        fields["stages"] = [tuple(s) for s in fields["stages"]]
    return fields


def from_wire(name: str, fields: dict[str, Any]) -> Message:
    cls = MESSAGES[name]
    if cls is Batch:
        payload = BY_NAME[fields["operation"]].Payload
        fields["payloads"] = [payload._make(p) for p in fields["payloads"]]
    elif cls is Done:
        result = BY_NAME[fields["operation"]].Result
        fields["outcomes"] = [
            result._make(f) if tag == "result" else Refusal._make(f).to_error() for tag, f in fields["outcomes"]
        ]
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
