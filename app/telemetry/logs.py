"""Logging: uvicorn's setup with the service's loggers, every access line tagged with its request's ID, and one JSON
object per line with CVAE_LOG_FORMAT=json (for log collectors)."""

from __future__ import annotations

import contextvars
import copy
import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

# The ID of the request being handled (app/http/middleware.py sets it for each request), "-" outside one. uvicorn writes
# its access line from inside the request's task, so the line sees it.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The model that answered the request being handled (set by /generate and /encode as they answer), "-" otherwise:
# during a reload, each access line says which model made its answer, as the answer's X-Model-Id does.
MODEL_ID: contextvars.ContextVar[str] = contextvars.ContextVar("model_id", default="-")
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")  # uvicorn's access line arguments, in order
LogFormat = Literal["text", "json"]


class RequestIdFilter(logging.Filter):
    """Adds `request_id` and `model_id` to every record (a filter on the handlers, so every logger's records get
    them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.model_id = MODEL_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger, message, request_id when in a
    request; an access line's fields by name (client, method, path, http_version, status); exception text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        model_id = getattr(record, "model_id", "-")
        if model_id != "-":
            entry["model_id"] = model_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            entry.update(zip(ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def logging_config(level: str, fmt: LogFormat = "text") -> dict[str, Any]:
    """uvicorn's own logging setup, with the service's loggers (app.*, model.*) printed the same way, the request ID
    at the end of every access line, and, for fmt "json", every line as a JSON object."""
    from uvicorn.config import LOGGING_CONFIG  # here: the inference process logs without uvicorn

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    if fmt == "json":
        config["formatters"] = {name: {"()": JsonFormatter} for name in config["formatters"]}
    else:
        access = config["formatters"]["access"]
        access["fmt"] = access["fmt"] + " request_id=%(request_id)s model_id=%(model_id)s"
    for name in ("app", "model"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def configure_child(fmt: LogFormat) -> None:
    """Logging for the inference process: warnings and errors, tagged as its own, in the server's format."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s: [inference process] %(message)s"))
    logging.basicConfig(handlers=[handler])
