"""The messages between the server and its inference process (app/worker.py), and how they travel.

Server -> child: DrawBatch, EncodeBatch, Stop. Child -> server: Ready (or StartFailed) once, then one reply per batch,
in the order the batches were sent: Drawn, Encoded or BatchFailed.

Every message, and every payload inside one (GenerateSpec, Upload, EncodeResult, Refusal), is a NamedTuple: code on
both sides reads fields by name. On the wire a message is a pickle (protocol 5) of (class name, to_wire()), after an
8-byte big-endian length: to_wire() gives the message's fields by name, with each payload as a plain tuple in its
class's own field order (tuple(p), then cls._make): pickling the classes themselves would cost several times more
per payload, and the order cannot drift from the class. What can drift is the code itself, when the checkout
changes under a running server and a restarted child imports the new one: Ready carries wire_version(), a digest of
every class's name and field names, and the server refuses a child whose digest differs. Only the server and the
child it spawned hold the socket, so unpickling trusts what it reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import socket
import struct
from functools import lru_cache
from typing import Any, NamedTuple

from app.errors import ServiceError
from app.service import EncodeResult, GenerateSpec, Upload

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
    """The child loaded the model and prepared it (DigitService.prepare)."""

    version: str  # the child's wire_version()
    model_id: str
    pass_rows: int  # the largest decoder pass prepare() allowed
    score_uploads: int  # the most uploads scored in one pass

    def to_wire(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Ready:
        return cls(**fields)


class StartFailed(NamedTuple):
    """The child could not load or prepare the model."""

    reason: str

    def to_wire(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> StartFailed:
        return cls(**fields)


class DrawBatch(NamedTuple):
    batch_id: int
    specs: list[GenerateSpec]

    def to_wire(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "specs": [tuple(s) for s in self.specs]}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> DrawBatch:
        return cls(batch_id=fields["batch_id"], specs=[GenerateSpec._make(s) for s in fields["specs"]])


class EncodeBatch(NamedTuple):
    batch_id: int
    uploads: list[Upload]

    def to_wire(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "uploads": [tuple(u) for u in self.uploads]}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> EncodeBatch:
        return cls(batch_id=fields["batch_id"], uploads=[Upload._make(u) for u in fields["uploads"]])


class Drawn(NamedTuple):
    """A DrawBatch's answer: the PNG of each spec, in order."""

    batch_id: int
    pngs: list[bytes]

    def to_wire(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Drawn:
        return cls(**fields)


class Encoded(NamedTuple):
    """An EncodeBatch's answer: each upload's result, or the error that upload alone gets."""

    batch_id: int
    outcomes: list[EncodeResult | ServiceError]

    def to_wire(self) -> dict[str, Any]:
        outcomes = [
            ("result", tuple(o)) if isinstance(o, EncodeResult) else ("refusal", tuple(Refusal.of(o)))
            for o in self.outcomes
        ]
        return {"batch_id": self.batch_id, "outcomes": outcomes}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Encoded:
        outcomes = [
            EncodeResult._make(f) if tag == "result" else Refusal._make(f).to_error() for tag, f in fields["outcomes"]
        ]
        return cls(batch_id=fields["batch_id"], outcomes=outcomes)


class BatchFailed(NamedTuple):
    """The whole batch failed (an unexpected error; the child goes on)."""

    batch_id: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> BatchFailed:
        return cls(**fields)


class Stop(NamedTuple):
    """Exit after answering what was sent before."""

    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Stop:
        return cls()


Message = Ready | StartFailed | DrawBatch | EncodeBatch | Drawn | Encoded | BatchFailed | Stop
MESSAGES: dict[str, type[Message]] = {
    cls.__name__: cls for cls in (Ready, StartFailed, DrawBatch, EncodeBatch, Drawn, Encoded, BatchFailed, Stop)
}
PAYLOADS = (GenerateSpec, Upload, EncodeResult, Refusal)


@lru_cache(maxsize=1)
def wire_version() -> str:
    """A digest of every message's and payload's class name and field names, in order."""
    layout = repr([(cls.__name__, cls._fields) for cls in (*MESSAGES.values(), *PAYLOADS)])
    return hashlib.sha256(layout.encode()).hexdigest()[:16]


def frame(message: Message) -> bytes:
    body = pickle.dumps((type(message).__name__, message.to_wire()), protocol=5)
    return HEADER.pack(len(body)) + body


def parse(body: bytes) -> Message:
    try:
        name, fields = pickle.loads(body)
        return MESSAGES[name].from_wire(fields)
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
