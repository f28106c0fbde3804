"""The timed steps of a batch's work that the engine reports for traces (app/telemetry/otel.py): plain values, so
that the engine, the inference process and telemetry share them without importing one another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Stage(NamedTuple):
    """A step of a batch's work timed by the engine."""

    name: str  # "inference", "png" (a drawing's) or "image" (an upload's decoding)
    item: int | None  # the job it was for, by its index in the batch; None: the whole batch
    start_ns: int  # time.time_ns(): the wall clock, the same in the server and the inference process
    end_ns: int


@dataclass
class BatchTrace:
    """A traced batch: each job's trace context goes in (W3C traceparents, for the engine's logs), the engine's timed
    stages come out. A batch without one is timed by nobody."""

    traceparents: list[str]
    stages: list[Stage] = field(default_factory=list)
