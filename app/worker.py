"""The inference process: /generate batches decoded and written as PNGs in a child process of the server.

Why a process: the server's event loop spends most of a request in Python (HTTP, validation), and Python lets
one thread at a time run Python code (the GIL). A thread doing the model work in the same process competes with
the event loop for that lock at every small tensor operation and PNG write, and each time it wants the lock back
from the busy loop it waits (up to sys.getswitchinterval(), 5 ms). A child process has its own interpreter and
its own core: the event loop only validates requests, batches them and relays bytes.

Protocol, over a socketpair: frames of an 8-byte big-endian length + a pickle (protocol 5). Parent -> child:
("generate", batch_id, [spec fields, ...]) or ("stop",). Child -> parent: ("ready", model_id, pass_rows) once
loaded and warmed up (pass_rows: DigitService.pass_rows), ("failed", message) if it cannot load, ("result",
batch_id, [png, ...]) or ("error", batch_id, message). Only PNGs come back: a request's latents, when asked for,
are recomputed by the server (cheap, and deterministic). The child ignores SIGINT (the server drains first), and
exits on ("stop",) or when the socket closes, e.g. because the server died.

    python -m app.worker --fd N --model-dir DIR --options '{"torch_threads": 1, "decode_chunk": 32, ...}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import ServiceError
from app.service import GenerateSpec

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

HEADER = struct.Struct(">Q")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # what the child needs on sys.path to import app and model


def frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(body)) + body


# --- the child ------------------------------------------------------------------------------------------------


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


def serve(sock: socket.socket, model_dir: Path, options: dict[str, Any]) -> int:
    """The child's loop: load, warm up, then answer batches until told to stop or the parent goes away."""
    import torch

    from app.service import DigitService
    from model.artifacts import load_model_dir

    try:
        torch.set_num_threads(options.pop("torch_threads"))
        max_pass_rows = options.pop("max_pass_rows")
        model = load_model_dir(model_dir)
        service = DigitService(model, max_image_pixels=1, **options)
        service.enable_large_passes(max_pass_rows)
        service.warm_up_generate()
    except Exception as e:
        sock.sendall(frame(("failed", f"{type(e).__name__}: {e}")))
        return 1
    gc.collect()
    gc.freeze()  # as the server does (app/factory.py, freeze_heap): full collections would stall batches
    sock.sendall(frame(("ready", model.id, service.pass_rows)))
    while True:
        header = _recv_exactly(sock, HEADER.size)
        if header is None:
            return 0  # the parent closed the socket (or died)
        body = _recv_exactly(sock, HEADER.unpack(header)[0])
        if body is None:
            return 0
        message = pickle.loads(body)
        if message[0] == "stop":
            return 0
        _, batch_id, wire_specs = message
        try:
            reply: tuple[Any, ...] = ("result", batch_id, service.draw_batch([GenerateSpec(*f) for f in wire_specs]))
        except Exception as e:  # the batch fails, the process goes on
            reply = ("error", batch_id, f"{type(e).__name__}: {e}")
        sock.sendall(frame(reply))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from the server")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--options", type=json.loads, required=True, help="torch_threads and DigitService options")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops us in order
    with socket.socket(fileno=args.fd) as sock:
        return serve(sock, args.model_dir, args.options)


# --- the parent's side ----------------------------------------------------------------------------------------


class InferenceProcess:
    """The server's handle on the child: `await draw(specs)` -> the PNG of each spec (DigitService.draw_batch).

    Runs in the event loop only (no threads): frames are written through and read from an asyncio stream. If
    the child dies, the batches it held fail with 503 and a new child is started."""

    def __init__(self, settings: Settings, start_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[list[bytes]]] = {}
        self._next_id = 0
        self._stopping = False
        self.restarts = 0

    @property
    def available(self) -> bool:
        return self._writer is not None and not self._stopping

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def spawn(self) -> None:
        """Start the child (it loads the model); wait_ready() then waits for it."""
        s = self.settings
        parent, child = socket.socketpair()
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        options = {
            "torch_threads": s.torch_threads, "decode_chunk": s.decode_chunk, "max_pass_rows": s.max_batch,
            "png_compress_level": s.png_compress_level, "png_store_max_pixels": s.png_store_max_pixels,
        }  # fmt: skip
        cmd = [sys.executable, "-m", "app.worker", "--fd", str(child.fileno()), "--model-dir", str(s.model_dir),
               "--options", json.dumps(options)]  # fmt: skip
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

    async def wait_ready(self) -> None:
        """Wait until the spawned child has loaded and warmed up the model. RuntimeError if it cannot."""
        assert self._socket is not None, "spawn() first"
        reader, writer = await asyncio.open_connection(sock=self._socket)
        self._socket = None
        try:
            message = await asyncio.wait_for(_read_frame(reader), self.start_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as e:
            writer.close()
            self._kill()
            raise RuntimeError(f"the inference process did not start: {type(e).__name__} {e}") from e
        if message[0] != "ready":
            writer.close()
            self._kill()
            raise RuntimeError(f"the inference process could not load the model: {message[1]}")
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader), name="inference-reader")
        log.info("inference process %s ready (decoder passes of up to %s rows)", self.pid, message[2])

    async def start(self) -> None:
        self.spawn()
        await self.wait_ready()

    async def draw(self, specs: list[GenerateSpec]) -> list[bytes]:
        if self._writer is None or self._stopping:
            raise ServiceError(
                503, "the inference process is restarting; try again shortly", kind="not-ready",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        batch_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._pending[batch_id] = future
        self._writer.write(frame(("generate", batch_id, [_wire(s) for s in specs])))
        try:
            return await future
        finally:
            self._pending.pop(batch_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await _read_frame(reader)
                future = self._pending.pop(message[1], None)
                if future is None or future.done():
                    continue
                if message[0] == "result":
                    future.set_result(message[2])
                else:
                    future.set_exception(RuntimeError(f"the inference process failed a batch: {message[2]}"))
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError) as e:
            self._lost(e)

    def _lost(self, e: BaseException) -> None:
        """The child is gone (or the stream broke): fail what it held; start a new one unless stopping."""
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
        if self._stopping:
            return
        code = self.process.poll() if self.process else None
        log.error("the inference process stopped (exit code %s, %s); starting a new one", code, type(e).__name__)
        self._kill()
        self._restart_task = asyncio.get_running_loop().create_task(self._restart(), name="inference-restart")

    async def _restart(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                await self.start()
                self.restarts += 1
                return
            except RuntimeError as e:
                log.error("%s; retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit (after the batches it holds), wait for it, kill it if it does not go."""
        self._stopping = True
        if self._socket is not None:  # spawned, never waited for
            self._socket.close()
            self._socket = None
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.write(frame(("stop",)))
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

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _wire(spec: GenerateSpec) -> tuple[Any, ...]:
    """A spec as a plain tuple of its fields: pickled in C, several times faster than the dataclass."""
    return (spec.digits, spec.n, spec.latent, spec.seed, spec.temperature, spec.columns, spec.padding, spec.scale,
            spec.width, spec.height)  # fmt: skip


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(size))


if __name__ == "__main__":
    sys.exit(main())
