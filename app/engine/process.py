"""ProcessEngine: the engine whose model work runs in a child process (app/inference/child.py) with its own interpreter
and core, so that the server's event loop only parses requests, batches them and relays bytes. It talks to the child
over a socketpair in the messages of app/engine/wire.py; if the child dies, the batches it held are answered 503 and
a new one is started. Why a process: docs/architecture.md."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.core.errors import ServiceError, unavailable
from app.core.stages import BatchTrace
from app.engine.interface import InferenceOptions, Prepared, freeze_heap
from app.engine.wire import (
    Batch,
    BatchFailed,
    Done,
    Message,
    Ready,
    StartFailed,
    Stop,
    WireError,
    frame,
    read_message,
    wire_version,
)

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # what the child needs on sys.path to import app and model
# A batch takes well under a second (the largest /generate, a 16-megapixel upload); one that takes this long means the
# child hangs (stopped, swapping, deadlocked): it is killed and replaced, and the batch answered 503.
BATCH_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0  # loading, warming up and checking the model; a child silent this long is killed


class ProcessEngine:
    """The Engine whose model work runs in the child. Lives in the event loop only (no threads): frames are written
    through and read from an asyncio stream."""

    def __init__(
        self,
        *,
        model_dir: Path,
        options: InferenceOptions,
        torch_threads: int,
        log_format: str,
        batch_timeout_s: float = BATCH_TIMEOUT_S,
    ) -> None:
        self.model_dir = model_dir
        self.options = options
        self.torch_threads = torch_threads
        self.log_format = log_format
        self.batch_timeout_s = batch_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.model_id: str | None = None  # the id of the model the child loaded, from its Ready
        self._socket: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 0
        self._closing = False

    def start(self) -> None:
        """Start the child, which loads the model at once; prepare() waits for it."""
        self._spawn()

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

    async def run(
        self, operation: str, payloads: list[Any], trace: BatchTrace | None = None
    ) -> list[Any | ServiceError]:
        traceparents = trace.traceparents if trace is not None else None
        batch = Batch(batch_id=self._new_id(), operation=operation, payloads=payloads, traceparents=traceparents)
        reply = await self._send(batch)
        assert isinstance(reply, Done)
        if trace is not None and reply.stages is not None:
            trace.stages.extend(reply.stages)
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
        parent, child = socket.socketpair()
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        options = json.dumps(dataclasses.asdict(self.options))
        cmd = [sys.executable, "-m", "app.inference.child", "--fd", str(child.fileno()), "--model-dir",
               str(self.model_dir), "--torch-threads", str(self.torch_threads), "--options", options,
               "--log-format", self.log_format]  # fmt: skip
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
            message = await asyncio.wait_for(read_message(reader), START_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, OSError, WireError) as e:
            writer.close()
            self._kill()
            raise RuntimeError(f"the inference process did not start: {type(e).__name__} {e}") from e
        except asyncio.CancelledError:  # a reload that gave up waiting (app/serving/reload.py)
            writer.close()
            self._kill()
            raise
        if not isinstance(message, Ready) or message.version != wire_version():
            writer.close()
            self._kill()
            if isinstance(message, StartFailed):
                raise RuntimeError(f"the inference process could not load the model: {message.reason}")
            raise RuntimeError(f"the inference process runs other code (its first message: {message!r:.200})")
        self._writer = writer
        self.model_id = message.model_id
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader), name="inference-reader")
        log.info(
            "inference process %s ready (decoder passes of up to %d rows, up to %d uploads scored together)",
            self.pid, message.pass_rows, message.score_uploads,
        )  # fmt: skip
        return Prepared(pass_rows=message.pass_rows, score_uploads=message.score_uploads)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def _send(self, message: Batch) -> Message:
        if self._writer is None or self._closing:
            raise unavailable("the inference process is restarting; try again shortly", kind="not-ready")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[message.batch_id] = future
        self._writer.write(frame(message))
        try:
            return await asyncio.wait_for(future, self.batch_timeout_s)
        except TimeoutError:
            log.error("the inference process took over %g s on a batch; replacing it", self.batch_timeout_s)
            self._kill()  # the reader sees the socket close: _lost() fails what the child held and starts a new one
            raise unavailable("the inference process stopped answering; try again", kind="not-ready") from None
        finally:
            self._pending.pop(message.batch_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_message(reader)
                if not isinstance(message, Done | BatchFailed):
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
                future.set_exception(unavailable("the inference process stopped; try again", kind="not-ready"))
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
