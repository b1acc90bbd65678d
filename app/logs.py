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
import time
from collections import Counter
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


class RateLimitFilter(logging.Filter):
    """Repeated warnings and errors (same logger, level, message template and first
    argument, e.g. the error code) pass ``BURST`` at once, then one per ``EVERY_S``; the
    next line that passes says how many were held back (``suppressed``). Overload must not
    turn into 6,000 identical tracebacks. ``SUPPRESSED`` (by logger and level) is on
    ``/metrics`` as ``rerank_log_lines_suppressed_total``."""

    BURST, EVERY_S, MAX_KEYS = 5.0, 1.0, 1024

    def __init__(self) -> None:
        super().__init__()
        self._buckets: dict[tuple[Any, ...], list[float]] = {}  # key: [tokens, at, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        first = record.args[0] if isinstance(record.args, tuple) and record.args else None
        key = (record.name, record.levelno, record.msg, str(first))
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._buckets.clear()
            b = self._buckets[key] = [self.BURST, now, 0.0]
        b[0] = min(self.BURST, b[0] + (now - b[1]) / self.EVERY_S)
        b[1] = now
        if b[0] < 1.0:
            b[2] += 1
            SUPPRESSED[(record.name, record.levelname)] += 1
            return False
        b[0] -= 1.0
        if b[2]:
            record.fields = {**_fields(record), "suppressed": int(b[2])}
            b[2] = 0.0
        return True


SUPPRESSED: Counter[tuple[str, str]] = Counter()


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
    handler.addFilter(RateLimitFilter())
    return handler


def configure(level: str, fmt: str) -> None:
    """Replace the root logger's handlers with one of ours on stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper())
