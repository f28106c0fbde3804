"""Every operation the service runs, in one list: the routes, the runtime's lanes, the wire, the inference process
and the metrics loop over it. Adding an operation is its module and one line here."""

from __future__ import annotations

from typing import Any

from app.operations import encode, generate, interpolate
from app.operations.base import Operation

OPERATIONS: tuple[Operation[Any, Any, Any], ...] = (
    generate.OPERATION,
    encode.OPERATION,
    interpolate.OPERATION,
)
BY_NAME: dict[str, Operation[Any, Any, Any]] = {op.name: op for op in OPERATIONS}
