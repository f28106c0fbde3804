"""Traces, opt-in: whether the standard OTEL_* environment asks for them, and the otel extra is there to make them.
Off (the default), neither OpenTelemetry's SDK nor app/telemetry/otel.py is imported and nothing is added to a
request's path (FastAPI imports OpenTelemetry's API itself, for its own telemetry, which stays idle: no provider is
configured); on, the work is done by app/telemetry/otel.py. How to turn them on, and what they cost:
docs/operating.md, "Traces"."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.telemetry.otel import Tracing

log = logging.getLogger(__name__)

# Setting any of these asks for traces. The SDK's own default exporter (otlp) needs none of them; here one must be set,
# so that a deployment that says nothing about OpenTelemetry gets nothing of it.
ASKING = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def asked(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none say no)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ASKING)


def from_environment(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as the environment (default: os.environ) asks for it; None when it does not, or when the otel extra is
    not installed (said once in the log: the service runs, untraced)."""
    environ = os.environ if environ is None else environ
    if not asked(environ):
        return None
    if find_spec("opentelemetry") is None or find_spec("opentelemetry.sdk") is None:
        log.warning("OTEL_* asks for traces, but OpenTelemetry's SDK is not installed (pip install '.[otel]')")
        return None
    from app.telemetry.otel import Tracing, provider_from

    return Tracing(provider_from(environ))
