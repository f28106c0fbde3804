"""The connection's transport (app.http.connections.LingeringTransport): what one step of the event loop writes goes
out in one write, in order, and nothing written is lost when the connection is closed or half-closed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from app.http.connections import LingeringTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.calls.append(("write", data))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def resume_reading(self) -> None:
        pass


def wrapped(loop: asyncio.AbstractEventLoop) -> tuple[LingeringTransport, RecordingTransport]:
    raw = RecordingTransport()
    protocol = SimpleNamespace(loop=loop, cycle=None)
    return LingeringTransport(raw, protocol), raw  # type: ignore[arg-type]


def test_a_responses_head_and_body_written_in_one_step_go_out_in_one_write() -> None:
    async def main() -> list[tuple[str, Any]]:
        transport, raw = wrapped(asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"")  # h11's end of a body of known length: nothing to send
        transport.write(bytearray(b"body"))
        assert raw.calls == [] and transport.get_write_buffer_size() == 23
        await asyncio.sleep(0)
        transport.write(b"next")
        await asyncio.sleep(0)
        return raw.calls

    assert asyncio.run(main()) == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody"), ("write", b"next")]


def test_closing_or_half_closing_sends_what_was_written_first_and_abort_drops_it() -> None:
    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        loop = asyncio.get_running_loop()
        closed, raw_closed = wrapped(loop)
        closed.write(b"answer")
        closed.close()
        half, raw_half = wrapped(loop)
        half.write(b"answer")
        half.write_eof()
        aborted, raw_aborted = wrapped(loop)
        aborted.write(b"answer")
        aborted.abort()
        await asyncio.sleep(0)  # the flushes scheduled by the writes find nothing left to send
        return raw_closed.calls, raw_half.calls, raw_aborted.calls

    closed, half, aborted = asyncio.run(main())
    assert closed == [("write", b"answer"), ("close", None)]
    assert half == [("write", b"answer"), ("write_eof", None)]
    assert aborted == [("abort", None)]


def test_what_is_pending_when_the_connection_is_lost_is_dropped_quietly() -> None:
    async def main() -> list[tuple[str, Any]]:
        transport, raw = wrapped(asyncio.get_running_loop())
        transport.write(b"answer")
        raw.closing = True  # the client went away before the end of the step
        await asyncio.sleep(0)
        return raw.calls

    assert asyncio.run(main()) == []
