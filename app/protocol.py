"""Connection-level guards aiohttp has no option for: a header-read timeout, a cap on open
connections, and the HTTP parser's errors in the service's JSON error shape.

They live in a ``RequestHandler`` subclass (aiohttp's per-connection protocol), installed
by :class:`GuardedRunner`, the runner ``serve`` uses. Parser errors never reach the app or
its middlewares, so this is the only place to shape them (aiohttp issue #3287).

This relies on aiohttp internals (``AppRunner._make_server``, ``Server._kwargs``, the
handler's ``_waiter``/``_messages``/``_force_close``): pyproject pins the tested range and
``tests/integration/test_protocol.py`` checks the effects, so an upgrade that changes them
fails loudly. Beware: ``web.Server`` drops *every* custom kwarg with only a WARNING when one
is unknown; the tests check that the timeouts act, not only that the server starts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.config import HttpConfig

log = logging.getLogger("app.protocol")


@dataclass
class ConnStats:
    """Connection counts of one process (mutable: updated by every connection)."""

    open: int = 0
    peak: int = 0
    refused: int = 0  # over max_connections
    header_timeouts: int = 0
    parse_errors: int = 0


def error_body(code: str, message: str, request_id: str) -> bytes:
    err = {"code": code, "message": message, "field": None, "request_id": request_id}
    return orjson.dumps({"error": err})


def raw_response(status: int, body: bytes, request_id: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response, for the paths where aiohttp has no request to answer."""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHandler(web.RequestHandler):
    """aiohttp's protocol plus a header-read timeout, a connection cap and JSON errors."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.http = manager.http
        self.stats = manager.stats
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.stats.open >= self.http.max_connections:
            # No request task, no parser work: a retryable 503 and the close.
            self.stats.refused += 1
            self._force_close = True  # data_received ignores anything that still arrives
            rid = uuid.uuid4().hex
            log.warning(
                "connection refused: %d open (max_connections)",
                self.stats.open,
                extra={"request_id": rid},
            )
            body = error_body("too_many_connections", "connection limit reached; retry", rid)
            retry = f"Retry-After: {self.http.retry_after_s}\r\n"
            tr: Any = transport
            tr.write(raw_response(503, body, rid, retry))
            tr.close()  # flushes the 503 first
            return
        self._counted = True
        self.stats.open += 1
        self.stats.peak = max(self.stats.peak, self.stats.open)
        super().connection_made(transport)
        self._arm_header_timer()  # the first request's headers are due from accept

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self.stats.open -= 1
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self._waiter is not None and not self._waiter.done() and not self._messages
        super().data_received(data)
        if self._messages or (self._waiter is not None and self._waiter.done()):
            self._cancel_header_timer()  # headers complete (or a parse error queued)
        elif idle and data and self._header_timer is None:
            self._arm_header_timer()  # first byte of the next request on a kept-alive conn

    def _arm_header_timer(self) -> None:
        if self.http.header_timeout_s > 0 and self._header_timer is None:
            self._header_timer = self._loop.call_later(
                self.http.header_timeout_s, self._header_timeout
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is None or self._force_close:
            return
        if self._messages or self._request_in_progress:
            return  # the headers completed meanwhile
        self.stats.header_timeouts += 1
        rid = uuid.uuid4().hex
        t = self.http.header_timeout_s
        log.warning(
            "header timeout from %s after %gs; closing",
            self.peername,
            t,
            extra={"request_id": rid},
        )
        body = error_body("header_timeout", f"request headers not complete within {t:g}s", rid)
        self.transport.write(raw_response(408, body, rid))
        self.force_close()  # closes once the 408 is flushed; ends the waiting start() task

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parser errors (and any error escaping every middleware) in the JSON shape. The
        ``request`` is aiohttp's placeholder: no headers, so a fresh request id."""
        rid = uuid.uuid4().hex
        if status >= 500:
            self.logger.error("error handling request: %r", exc, exc_info=exc)
            code, text = "internal_error", "internal error"
        else:
            self.stats.parse_errors += 1
            if isinstance(exc, LineTooLong):
                status, code = 431, "headers_too_large"
            else:
                code = "bad_request"
            text = " ".join((message or str(exc) or "bad request").split())[:300]
            log.warning(
                "unparsable request from %s: %s: %s",
                request.remote,
                code,
                text,
                extra={"request_id": rid},
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")  # as aiohttp does
        resp = web.Response(
            status=status,
            body=error_body(code, text, rid),
            content_type="application/json",
            headers={"X-Request-ID": rid},
        )
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """The ``web.Server`` aiohttp built for the app, making :class:`GuardedHandler` s."""

    def __init__(self, base: web.Server, http: HttpConfig, stats: ConnStats) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.http = http
        self.stats = stats

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class ConnCollector(Collector):
    """``ConnStats`` on ``/metrics``: events that never reach the app's middlewares."""

    def __init__(self, stats: ConnStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        yield GaugeMetricFamily("rerank_http_connections_open", "Open connections", st.open)
        for name, value, text in (
            ("refused", st.refused, "Connections refused over --max-connections"),
            ("header_timeouts", st.header_timeouts, "Connections closed by --header-timeout-s"),
            ("parse_errors", st.parse_errors, "Requests the HTTP parser rejected (4xx)"),
        ):
            yield CounterMetricFamily(f"rerank_http_connections_{name}", text, value)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` (startup, cleanup, shutdown_timeout unchanged) whose connections are
    guarded, with aiohttp's own keep-alive and lingering timers set from the config."""

    def __init__(self, app: web.Application, http: HttpConfig, **kw: Any) -> None:
        super().__init__(
            app,
            keepalive_timeout=http.keepalive_timeout_s,
            lingering_time=http.lingering_s,
            **kw,
        )
        self.http = http
        self.stats = ConnStats()

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.http, self.stats)


__all__ = ["ConnCollector", "ConnStats", "GuardedHandler", "GuardedRunner", "GuardedServer"]
