"""How a wafleet process logs: `configure_logging(settings, role)` once at start, before anything
logs. WAFLEET_LOG_FORMAT=text (default) leaves each process's human log as it is (Celery's, or
uvicorn's); `json` writes one JSON object per line to stderr, for log shippers:

    {"timestamp": "2026-11-22T17:30:00.123Z", "level": "INFO", "logger": "workers.session.host",
     "message": "...", "role": "session", "worker_id": "node-1", "pid": 123,
     "instance_id": "...", "tenant_id": "..."}

Fields: `timestamp` (UTC, ISO 8601, milliseconds), `level`, `logger`, `message` (with its
arguments applied), `role` (the process: session, routing, gateway, beat, demo), `pid`,
`worker_id` where the process has one, every field a caller passed with `extra={...}` (e.g.
`instance_id`, `tenant_id`; values that are not JSON become their `str`), and `exception` /
`stack` with the formatted traceback.

Celery's own loggers go through the same handler: in JSON mode a `setup_logging` receiver tells
Celery to leave logging alone (it would otherwise add its own formatter; see Celery's
`app.log.setup_logging_subsystem`), and its banner is suppressed by the callers (`--quiet`).
Celery's task records carry a `data` context with the task's arguments; it is left out (message
texts and phone numbers do not belong in logs). Logs are on stderr; stdout keeps the few notices
Celery prints there directly from its signal handlers (e.g. "worker: Warm shutdown").
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from config.settings import Settings

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_RESERVED = frozenset({"timestamp", "level", "logger", "message", "role", "pid", "worker_id"})


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, role: str, worker_id: str | None = None) -> None:
        super().__init__()
        self.role = role
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "role": self.role,
            "pid": record.process or os.getpid(),
        }
        worker_id = getattr(record, "worker_id", None) or self.worker_id
        if worker_id is not None:
            out["worker_id"] = str(worker_id)
        celery = record.name.startswith("celery")
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in _RESERVED or key.startswith("_"):
                continue
            if celery and key == "data":
                continue  # Celery's task context: reprs of the arguments (message texts, phones)
            out[key] = _jsonable(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _celery_keeps_our_logging(**_: Any) -> None:
    """A `celery.signals.setup_logging` receiver: its presence makes Celery skip its own setup."""


def configure_logging(
    settings: Settings, role: str, worker_id: str | None = None, stream: TextIO | None = None
) -> logging.Handler | None:
    """In JSON mode, install the process's one root handler (replacing any) at
    settings.log_level and return it (callers may add filters); in text mode, do nothing."""
    if settings.log_format != "json":
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(role, worker_id))
    from celery.signals import setup_logging

    setup_logging.connect(_celery_keeps_our_logging, weak=False)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
    return handler


def celery_flags(settings: Settings) -> list[str]:
    """Celery's global options before the sub-command: no banner on stdout in JSON mode."""
    return ["--quiet"] if settings.log_format == "json" else []
