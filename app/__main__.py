"""`python -m app [--host H] [--port P]`: serve the model directory named by CVAE_MODEL_DIR (default: the
shipped artifacts/default), or the models CVAE_MODELS names, with uvicorn. Other settings come from CVAE_* environment
variables.

A missing or corrupt model directory stops it before it binds the port: one log line naming the file, exit 1.
On SIGHUP, every model's directory is read again and its model served once checked (app/serving/reload.py).
On SIGTERM/SIGINT, /readyz turns 503 at once; after CVAE_SHUTDOWN_DELAY_S the port closes, and in-flight
requests get CVAE_GRACEFUL_SHUTDOWN_S to finish (those still running then are answered 503); then the process
exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.config
import signal
import sys
import time
from collections.abc import Generator
from types import FrameType
from typing import Any

import uvicorn

from app.factory import create_app
from app.http.connections import ConnectionLimits, protocol_class
from app.serving.state import ServiceState
from app.settings import Settings
from app.telemetry.logs import logging_config
from model.manifest import ModelDirError, read_card

log = logging.getLogger("app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", help="interface to bind (default: CVAE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: CVAE_PORT or 8000)")
    return parser.parse_args(argv)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How the service runs under uvicorn: one worker, the event loop uvicorn picks, and HTTP/1.1 by uvicorn's h11
    protocol with the service's connection limits (app/http/connections.py). tests/bench/serve.py runs its reference
    apps with this too, so that they share the service's stack."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits),
        log_config=None,  # configured by the caller
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # uvicorn annotates int, uses it as float
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        lifespan="on",
    )


class Server(uvicorn.Server):
    """uvicorn's server, marking the app as draining (so /readyz says 503) the moment shutdown is asked for,
    and closing the port only `delay_s` later (time for a load balancer to notice)."""

    def __init__(self, config: uvicorn.Config, service: ServiceState, delay_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.delay_s = delay_s
        self._exit_at: float | None = None
        self._exit_signal: int = signal.SIGTERM

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.service.draining:
            self.service.draining = True
            log.info("shutdown requested: /readyz now answers 503")
            if self.delay_s > 0:
                self._exit_at, self._exit_signal = time.monotonic() + self.delay_s, sig
                return
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, but a drained shutdown on SIGTERM ends with exit status 0. uvicorn raises the signal it stopped
        for again once it has shut down, with the handler that was installed before it: with the default one the
        process would end by SIGTERM (143), as if killed. Here that handler does nothing, so main() returns 0;
        SIGINT keeps its KeyboardInterrupt."""
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        previous_hup = signal.signal(signal.SIGHUP, self._reload_on_signal)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGHUP, previous_hup)

    def _reload_on_signal(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP: reload every model (app/serving/reload.py), in the event loop, without waiting for it here."""
        reloaders = self.service.reloaders
        if reloaders is None or self.service.draining:
            log.warning("SIGHUP ignored: the service is %s", "shutting down" if self.service.draining else "starting")
            return
        reloaders.loop.call_soon_threadsafe(reloaders.request, "SIGHUP")

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at and not self.should_exit:
            super().handle_exit(self._exit_signal, None)
        return await super().on_tick(counter)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings()
    except Exception as e:  # pydantic's ValidationError: a bad CVAE_* variable
        logging.basicConfig(format="%(levelname)s: %(message)s")
        log.error("invalid settings: %s", e)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=overrides)
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    for name, directory in settings.served_models():
        try:
            read_card(directory)  # fail before binding the port, without a traceback
        except ModelDirError as e:
            log.error("cannot serve the model %s: %s", name, e)
            return 1
    app = create_app(settings)
    server = Server(uvicorn_config(app, settings), app.state.service, settings.shutdown_delay_s)
    server.run()  # exits 3 if start-up fails
    return 0


if __name__ == "__main__":
    sys.exit(main())
