"""Logging set-up: JSON lines (default, for log pipelines) or text (for a terminal).

Every record logged while a request is handled carries that request's id, taken from a
context variable the HTTP middleware sets (``app/tracing.py``), so an error logged deep in
a handler can be matched with the access line and with the ``X-Request-ID`` the client got;
with tracing on (``app/otel.py``) also its ``trace_id`` and ``span_id``.
Structured fields travel in ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import sys
from typing import Any, Literal

import orjson

LogFormat = Literal["json", "text"]
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# (trace id, span id) of the request's server span, when tracing is on (app/otel.py).
TRACE_IDS: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "trace_ids", default=None
)


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from the context (``None`` outside a request), and
    ``trace_id``/``span_id`` when the request is traced, so logs and traces join."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        ids = TRACE_IDS.get()
        if ids is not None and getattr(record, "trace_id", None) is None:
            record.trace_id, record.span_id = ids
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            out["trace_id"], out["span_id"] = trace_id, getattr(record, "span_id", None)
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with ``[request id]`` and ``key=value`` fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        rid = getattr(record, "request_id", None)
        extra = "".join(f" {k}={_text(v)}" for k, v in _fields(record).items())
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            extra += f" trace_id={trace_id}"
        return (f"{head} [{rid}]" if rid else head) + extra + sep + tail


def _text(v: Any) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}:{x}" for k, x in v.items())
    return str(v)


def make_handler(fmt: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


def configure(level: str, fmt: str) -> None:
    """Replace the root logger's handlers with one of ours on stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper())
