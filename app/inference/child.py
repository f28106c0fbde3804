"""The inference process: `python -m app.inference.child`, started by ProcessEngine (app/engine/process.py). It
loads the model, prepares it and says Ready; then it answers batches in order until told to Stop or until the socket
closes (the server died). It ignores SIGINT: a terminal's Ctrl-C reaches the whole process group, and the server
drains first.

    python -m app.inference.child --fd N --model-dir DIR --torch-threads T --options '{"decode_chunk": 8, ...}'
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from pathlib import Path

from app.core.stages import Stage
from app.engine.interface import InferenceOptions
from app.engine.wire import (
    Batch,
    BatchFailed,
    Done,
    Message,
    Ready,
    StartFailed,
    Stop,
    frame,
    receive_message,
    wire_version,
)
from app.telemetry.logs import configure_child

log = logging.getLogger(__name__)


def serve(sock: socket.socket, model_dir: Path, options: InferenceOptions, torch_threads: int) -> int:
    """The child's loop: load and prepare the model, then answer batches until told to stop or the server goes."""
    import torch

    from app.inference.worker import load_inference, prepare_here

    try:
        torch.set_num_threads(torch_threads)
        inference = load_inference(model_dir, options)
        prepared = prepare_here(inference)
    except Exception as e:
        sock.sendall(frame(StartFailed(reason=f"{type(e).__name__}: {e}")))
        return 1
    ready = Ready(
        version=wire_version(),
        model_id=inference.card.id,
        pass_rows=prepared.pass_rows,
        score_uploads=prepared.score_uploads,
    )
    sock.sendall(frame(ready))
    while True:
        message = receive_message(sock)
        if message is None or isinstance(message, Stop):  # None: the server closed the socket (or died)
            return 0
        if not isinstance(message, Batch):
            log.error("the server sent %s, which the inference process does not take; exiting", type(message).__name__)
            return 2
        stages: list[Stage] | None = [] if message.traceparents is not None else None
        try:
            outcomes = inference.run(message.operation, message.payloads, stages)
            reply: Message = Done(message.batch_id, message.operation, outcomes, stages)
        except Exception as e:  # the batch fails, the process goes on
            log.exception("a batch failed (traces: %s)", message.traceparents or "none")
            reply = BatchFailed(batch_id=message.batch_id, reason=f"{type(e).__name__}: {e}")
        sock.sendall(frame(reply))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.inference.child", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from the server")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--torch-threads", type=int, required=True)
    parser.add_argument("--options", type=json.loads, required=True, help="InferenceOptions as JSON")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    configure_child(args.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=args.fd) as sock:
        return serve(sock, args.model_dir, InferenceOptions(**args.options), args.torch_threads)


if __name__ == "__main__":
    sys.exit(main())
