"""Connections: what `python -m app` adds to uvicorn's HTTP/1.1 protocol (header and body timeouts, a connection cap,
cancelling a request whose client has gone, a lingering close), and RequestGuard, the middleware that answers what
the protocol decided (408, 503, or nothing). The reasons for each are in docs/architecture.md."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.errors import ServiceError, unavailable
from app.http.middleware import ResponseStatus
from app.http.problems import send_problem

log = logging.getLogger(__name__)

LINK = "cvae.connection"  # scope key: the RequestLink of a request served by GuardedProtocol
LINGER_S = 2.0
LINGER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class RequestLink:
    """A request as its connection sees it: the task running it, why the connection cut it short (None: it did not),
    and whether it arrived on a connection over the cap."""

    __slots__ = ("over_capacity", "reason", "task")

    def __init__(self, task: asyncio.Task[Any] | None, over_capacity: bool) -> None:
        self.task = task
        self.over_capacity = over_capacity
        self.reason: str | None = None  # "disconnect" or "body_timeout"

    def cut(self, reason: str) -> None:
        if self.task is not None and not self.task.done() and self.reason is None:
            self.reason = reason
            self.task.cancel()


class LingeringTransport:
    """The connection's transport as uvicorn sees it: what is written in one step of the event loop goes out in one
    write, and closing it while the request's body is still arriving lingers (docs/architecture.md, "Connections");
    everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []
        self.lingering = False
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # uvicorn writes a response's head and its body separately, within one step of the loop: joined at the end
        # of that step, they cost one system call and wake the client once, not twice. Order is kept: everything
        # written goes through _pending, and close and write_eof send it first.
        if not data:
            return
        if not self._pending:
            self._protocol.loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():  # the connection is gone: so is its client
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        if self.lingering:
            return  # closed by its timer, or as soon as the client closes its side
        cycle = self._protocol.cycle
        transport = self._transport
        if cycle is None or not cycle.more_body or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()  # after what was written: the answer
        transport.resume_reading()
        self._protocol.loop.call_later(LINGER_S, transport.close)

    def drop(self, data: bytes) -> None:
        self.dropped += len(data)
        if self.dropped > LINGER_BYTES:
            self._transport.close()


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the timeouts, the cap and the disconnect handling above (make it with
    protocol_class(limits): uvicorn creates one per connection, given only its own Config)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = self.app
        self.app = self._run_request  # what uvicorn runs for each request of this connection
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._link: RequestLink | None = None
        self._over_capacity = False

    async def _run_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        link = RequestLink(asyncio.current_task(), self._over_capacity)
        scope[LINK] = link
        self._link = link
        try:
            await self._app(scope, receive, send)
        finally:
            if self._link is link:
                self._link = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering = LingeringTransport(transport, self)
        super().connection_made(self._lingering)  # type: ignore[arg-type]
        self._over_capacity = len(self.connections) > self.limits.max_connections
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering.lingering:
            self._lingering.drop(data)
            return
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._start_header_timer()  # the first bytes of the next request on a kept-alive connection
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request head is complete: its body's turn
            self._stop_header_timer()
            if self.cycle.more_body and self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out, self.cycle)
        if self._body_timer is not None and not self.cycle.more_body:
            self._stop_body_timer()

    def on_response_complete(self) -> None:
        self._stop_body_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        if self._link is not None and self.cycle is not None and not self.cycle.response_complete:
            self._link.cut("disconnect")
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            log.debug("closing a connection that sent no complete request head in %g s", self.limits.header_timeout_s)
            self.transport.close()

    def _body_timed_out(self, cycle: Any) -> None:
        self._body_timer = None
        if cycle is self.cycle and cycle.more_body and not cycle.response_complete:
            cycle.keep_alive = False  # the rest of the body may still come: answer, then close
            if self._link is not None:
                self._link.cut("body_timeout")


def protocol_class(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """GuardedProtocol with these limits, for uvicorn.Config(http=...)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class RequestGuard:
    """Answers what GuardedProtocol decided about a request; outside every middleware that answers, inside those that
    label and count answers (request IDs, metrics)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        link: RequestLink | None = scope.get(LINK) if scope["type"] == "http" else None
        if link is None:
            await self.app(scope, receive, send)
            return
        if link.over_capacity:
            error = unavailable("too many open connections; try again shortly", kind="overloaded", title="Overloaded")
            await send_problem(send, error)
            return
        response = ResponseStatus(send)
        try:
            await self.app(scope, receive, response)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.uncancel() > 0:  # cancelled once more, by someone else: let it end
                raise
            method, path = scope["method"], scope["path"]
            if link.reason == "disconnect":
                log.info('"%s %s" abandoned: the client closed the connection before its answer', method, path)
                return
            if response.started:  # uvicorn closes a response cut half way
                return
            if link.reason == "body_timeout":
                error = ServiceError(408, "the request body did not arrive in time", kind="body-timeout")
            else:  # uvicorn's graceful shutdown ended with the request still running, and cancelled it
                log.warning('"%s %s" cut short by the shutdown: answered 503', method, path)
                error = unavailable("the service is shutting down; try again", kind="shutting-down")
            await send_problem(send, error)
