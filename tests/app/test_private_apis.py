"""The private APIs of uvicorn and FastAPI that app/ builds on, checked where they live.

app/http/connections.py subclasses uvicorn's H11Protocol (its per-connection state and hooks), app/__main__.py overrides
uvicorn.Server's signal and tick hooks, app/api/parsing.py reads FastAPI's route internals. None of these is a public
API: a release that moves one would leave the service running without its connection guards, or its drain, or its
strict parsing. pyproject.toml bounds uvicorn and fastapi to the minors tested and requirements/*.txt pin them;
before raising either, these tests must pass on the new release.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import uvicorn
from fastapi import Form, params
from fastapi.routing import APIRoute
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

# Where app/ uses them.
from app.__main__ import Server
from app.api.parsing import StrictRoute
from app.http.connections import GuardedProtocol


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def own_public_methods(cls: type) -> list[str]:
    return [name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")]


def test_guarded_protocol_overrides_only_hooks_uvicorns_h11_protocol_still_has() -> None:
    # A hook renamed upstream would leave GuardedProtocol's override in place and never called.
    overridden = own_public_methods(GuardedProtocol)
    assert set(overridden) >= {"connection_made", "data_received", "on_response_complete", "connection_lost"}
    for name in overridden:
        base = getattr(H11Protocol, name, None)
        assert base is not None, f"uvicorn's H11Protocol has no {name}() any more: app/http/connections.py overrides it"
        assert parameters(base) == parameters(getattr(GuardedProtocol, name)), f"H11Protocol.{name}'s signature moved"


def test_h11_protocol_is_built_from_uvicorns_config_and_server_state() -> None:
    # uvicorn makes one protocol per connection as protocol_class(config=..., server_state=..., app_state=...).
    assert parameters(H11Protocol.__init__) == ["self", "config", "server_state", "app_state", "_loop"]
    assert parameters(RequestResponseCycle.run_asgi) == ["self", "app"]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_h11_protocol_state_that_the_connection_guards_read() -> None:
    """What GuardedProtocol relies on, on a plain H11Protocol fed one request by hand: `connections` is the server's
    set of open connections; `app` is read when a request head arrives (GuardedProtocol replaces it to wrap each
    request); `cycle` is the request's RequestResponseCycle, new for each head, with `more_body` (cleared when the
    body is in), `response_complete` and `keep_alive`; `loop` and `transport` are the connection's."""
    paths: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app the protocol was built with ran instead of the one it holds")

    async def replacement(scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope["path"])
        while (await receive())["more_body"]:
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(app=app, lifespan="off", log_config=None)
        state = ServerState()
        protocol = H11Protocol(config=config, server_state=state, app_state={}, _loop=loop)
        transport = FakeTransport()
        protocol.connection_made(transport)
        assert protocol.connections is state.connections and protocol in state.connections
        assert protocol.transport is transport and protocol.loop is loop
        assert protocol.cycle is None  # no request yet
        protocol.app = replacement
        protocol.data_received(b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        cycle = protocol.cycle
        assert isinstance(cycle, RequestResponseCycle)
        assert cycle.more_body and not cycle.response_complete and cycle.keep_alive
        protocol.data_received(b"cd")
        assert not cycle.more_body  # the body is in
        for _ in range(20):
            await asyncio.sleep(0)
        assert paths == ["/generate"] and cycle.response_complete
        assert transport.written.startswith(b"HTTP/1.1 204 ")
        protocol.connection_lost(None)
        assert protocol not in state.connections

    asyncio.run(drive())


def test_server_overrides_only_hooks_uvicorns_server_still_has() -> None:
    # app/__main__.py's Server: handle_exit (drain first), capture_signals (exit 0 on SIGTERM), on_tick (delayed exit).
    overridden = own_public_methods(Server)
    assert set(overridden) >= {"handle_exit", "capture_signals", "on_tick"}
    for name in overridden:
        base = getattr(uvicorn.Server, name, None)
        assert base is not None, f"uvicorn.Server has no {name}() any more: app/__main__.py overrides it"
        assert parameters(base) == parameters(getattr(Server, name)), f"uvicorn.Server.{name}'s signature moved"
    assert inspect.iscoroutinefunction(uvicorn.Server.on_tick)
    assert uvicorn.Server(uvicorn.Config(app=None)).should_exit is False


def test_fastapi_route_internals_that_strict_parsing_reads() -> None:
    # app/api/parsing.py's StrictRoute: get_route_handler, body_field.field_info (params.Form for a form route) and
    # dependant.body_params' aliases.
    assert "get_route_handler" in own_public_methods(StrictRoute)
    assert parameters(APIRoute.get_route_handler) == parameters(StrictRoute.get_route_handler)

    def upload(file: str = Form(), digit: str = Form(alias="label")) -> None:
        pass

    route = APIRoute("/encode", upload, methods=["POST"])
    assert route.body_field is not None and isinstance(route.body_field.field_info, params.Form)
    assert sorted(param.alias for param in route.dependant.body_params) == ["file", "label"]
    assert APIRoute("/livez", lambda: None).body_field is None
