"""The inference process: the Engine (app/engine.py) whose model work runs in a child process of the server.

Why a process: the server's event loop spends most of a request in Python (HTTP, validation), and Python lets
one thread at a time run Python code (the GIL). A thread doing the model work in the same process competes with
the event loop for that lock at every small tensor operation and PNG write, and each time it wants the lock back
from the busy loop it waits (up to sys.getswitchinterval(), 5 ms). A child process has its own interpreter and
its own core: the event loop only parses requests, batches them and relays bytes.

The two talk over a socketpair in the typed messages of app/messages.py. The child loads the model, prepares it
(engine.prepare_here) and says Ready; then it answers batches in order until told to Stop or until the socket
closes (the server died). It ignores SIGINT: a terminal's Ctrl-C reaches the whole process group, and the server
drains first. If the child dies, the batches it held fail with 503 and the server starts a new one.

    python -m app.worker --fd N --model-dir DIR --torch-threads T --options '{"decode_chunk": 8, ...}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.engine import freeze_heap, prepare_here, service_options
from app.errors import ServiceError
from app.logs import configure_child
from app.messages import (
    BatchFailed,
    DrawBatch,
    Drawn,
    EncodeBatch,
    Encoded,
    Message,
    Ready,
    StartFailed,
    Stop,
    WireError,
    frame,
    read_message,
    receive_message,
    wire_version,
)
from app.service import DigitService, EncodeResult, GenerateSpec, Prepared, ServiceOptions, Upload
from app.settings import Settings

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # what the child needs on sys.path to import app and model
# A batch takes well under a second (the largest /generate, a 16-megapixel upload); one that takes this long means the
# child hangs (stopped, swapping, deadlocked): it is killed and replaced, and the batch answered 503.
BATCH_TIMEOUT_S = 60.0


# --- the child ------------------------------------------------------------------------------------------------


def serve(sock: socket.socket, model_dir: Path, options: ServiceOptions, torch_threads: int) -> int:
    """The child's loop: load and prepare the model, then answer batches until told to stop or the server goes."""
    import torch

    from model.artifacts import load_model_dir

    try:
        torch.set_num_threads(torch_threads)
        service = DigitService(load_model_dir(model_dir), options)
        prepared = prepare_here(service)
    except Exception as e:
        sock.sendall(frame(StartFailed(reason=f"{type(e).__name__}: {e}")))
        return 1
    ready = Ready(
        version=wire_version(),
        model_id=service.model_id,
        pass_rows=prepared.pass_rows,
        score_uploads=prepared.score_uploads,
    )
    sock.sendall(frame(ready))
    while True:
        message = receive_message(sock)
        if message is None or isinstance(message, Stop):  # None: the server closed the socket (or died)
            return 0
        if not isinstance(message, DrawBatch | EncodeBatch):
            log.error("the server sent %s, which the inference process does not take; exiting", type(message).__name__)
            return 2
        try:
            if isinstance(message, DrawBatch):
                reply: Message = Drawn(batch_id=message.batch_id, pngs=service.draw_batch(message.specs))
            else:
                reply = Encoded(batch_id=message.batch_id, outcomes=service.encode_batch(message.uploads))
        except Exception as e:  # the batch fails, the process goes on
            log.exception("a batch failed")
            reply = BatchFailed(batch_id=message.batch_id, reason=f"{type(e).__name__}: {e}")
        sock.sendall(frame(reply))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from the server")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--torch-threads", type=int, required=True)
    parser.add_argument("--options", type=json.loads, required=True, help="app.service.ServiceOptions as JSON")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    configure_child(args.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=args.fd) as sock:
        return serve(sock, args.model_dir, ServiceOptions(**args.options), args.torch_threads)


# --- the server's side ----------------------------------------------------------------------------------------


class ProcessEngine:
    """The Engine whose model work runs in the child. Lives in the event loop only (no threads): frames are written
    through and read from an asyncio stream."""

    def __init__(
        self, settings: Settings, start_timeout_s: float = 120.0, batch_timeout_s: float = BATCH_TIMEOUT_S
    ) -> None:
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self.batch_timeout_s = batch_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._socket: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 0
        self._closing = False

    @classmethod
    def spawn(
        cls, settings: Settings, start_timeout_s: float = 120.0, batch_timeout_s: float = BATCH_TIMEOUT_S
    ) -> ProcessEngine:
        """Start the child, which loads the model at once (while the server loads its own copy); prepare() waits."""
        engine = cls(settings, start_timeout_s, batch_timeout_s)
        engine._spawn()
        return engine

    @property
    def available(self) -> bool:
        return self._writer is not None and not self._closing

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def prepare(self) -> Prepared:
        """Wait until the child has loaded and prepared the model, then freeze the server's own heap. RuntimeError
        if the child cannot start."""
        prepared = await self._wait_ready()
        freeze_heap()
        return prepared

    async def draw(self, specs: list[GenerateSpec]) -> list[bytes]:
        reply = await self._send(DrawBatch(batch_id=self._new_id(), specs=specs))
        assert isinstance(reply, Drawn)
        return reply.pngs

    async def encode(self, uploads: list[Upload]) -> list[EncodeResult | ServiceError]:
        reply = await self._send(EncodeBatch(batch_id=self._new_id(), uploads=uploads))
        assert isinstance(reply, Encoded)
        return reply.outcomes

    async def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit (after the batches it holds), wait for it, kill it if it does not go."""
        self._closing = True
        if self._socket is not None:  # spawned, never waited for
            self._socket.close()
            self._socket = None
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.write(frame(Stop()))
                await self._writer.drain()
        deadline = time.monotonic() + timeout_s
        while self.process is not None and self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._kill()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        gc.unfreeze()

    def _spawn(self) -> None:
        s = self.settings
        parent, child = socket.socketpair()
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        options = json.dumps(dataclasses.asdict(service_options(s)))
        cmd = [sys.executable, "-m", "app.worker", "--fd", str(child.fileno()), "--model-dir", str(s.model_dir),
               "--torch-threads", str(s.torch_threads), "--options", options, "--log-format", s.log_format]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                cmd, pass_fds=(child.fileno(),), env={**os.environ, "PYTHONPATH": path}, start_new_session=True
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._socket = parent

    async def _wait_ready(self) -> Prepared:
        assert self._socket is not None, "spawn first"
        reader, writer = await asyncio.open_connection(sock=self._socket)
        self._socket = None
        try:
            message = await asyncio.wait_for(read_message(reader), self.start_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, OSError, WireError) as e:
            writer.close()
            self._kill()
            raise RuntimeError(f"the inference process did not start: {type(e).__name__} {e}") from e
        if not isinstance(message, Ready) or message.version != wire_version():
            writer.close()
            self._kill()
            if isinstance(message, StartFailed):
                raise RuntimeError(f"the inference process could not load the model: {message.reason}")
            raise RuntimeError(f"the inference process runs other code (its first message: {message!r:.200})")
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader), name="inference-reader")
        log.info(
            "inference process %s ready (decoder passes of up to %d rows, up to %d uploads scored together)",
            self.pid, message.pass_rows, message.score_uploads,
        )  # fmt: skip
        return Prepared(pass_rows=message.pass_rows, score_uploads=message.score_uploads)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def _send(self, message: DrawBatch | EncodeBatch) -> Message:
        if self._writer is None or self._closing:
            raise ServiceError(
                503, "the inference process is restarting; try again shortly", kind="not-ready",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.batch_id] = future
        self._writer.write(frame(message))
        try:
            return await asyncio.wait_for(future, self.batch_timeout_s)
        except TimeoutError:
            log.error("the inference process took over %g s on a batch; replacing it", self.batch_timeout_s)
            self._kill()  # the reader sees the socket close: _lost() fails what the child held and starts a new one
            raise ServiceError(
                503, "the inference process stopped answering; try again", kind="not-ready",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        finally:
            self._pending.pop(message.batch_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_message(reader)
                if not isinstance(message, Drawn | Encoded | BatchFailed):
                    raise WireError(f"unexpected {type(message).__name__} from the inference process")
                future = self._pending.pop(message.batch_id, None)
                if future is None or future.done():
                    continue
                if isinstance(message, BatchFailed):
                    future.set_exception(RuntimeError(f"the inference process failed a batch: {message.reason}"))
                else:
                    future.set_result(message)
        except (asyncio.IncompleteReadError, OSError, WireError) as e:
            self._lost(e)

    def _lost(self, e: BaseException) -> None:
        """The child is gone (or the stream broke): fail what it held; start a new one unless closing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    ServiceError(503, "the inference process stopped; try again", kind="not-ready",
                                 headers={"Retry-After": "1"})
                )  # fmt: skip
        self._pending.clear()
        if self._closing:
            return
        code = self.process.poll() if self.process else None
        log.error("the inference process stopped (exit code %s, %s); starting a new one", code, type(e).__name__)
        self._kill()
        self._restart_task = asyncio.get_running_loop().create_task(self._restart(), name="inference-restart")

    async def _restart(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                self._spawn()
                await self._wait_ready()
                self.restarts += 1
                return
            except RuntimeError as e:
                log.error("%s; retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


if __name__ == "__main__":
    sys.exit(main())
