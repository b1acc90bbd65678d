"""Connection-level guards aiohttp has no option for: a header-read timeout, fair caps on
open connections (``app/connections.py``), a write timeout and a bounded output buffer
(``app/writes.py``) for clients that stop reading, and the parser's errors as JSON.

They live in a ``RequestHandler`` subclass (aiohttp's per-connection protocol), installed
by :class:`GuardedRunner`, the runner ``serve`` uses. Parser errors never reach the app or
its middlewares, so this is the only place to shape them (aiohttp issue #3287).

This relies on aiohttp internals (``AppRunner._make_server``, ``Server._kwargs``, the
handler's ``_waiter``/``_messages``/``_force_close``): pyproject pins the tested range and
``tests/integration/test_protocol.py`` checks the effects. Beware: ``web.Server`` drops
*every* custom kwarg with only a WARNING when one is unknown: tests check that they act.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from app.config import HttpConfig
from app.connections import ADMIN_CONNECTIONS, ConnPool, ConnStats, raw_response
from app.http import error_body
from app.writes import bounded_writes, limit_write_buffer

log = logging.getLogger("app.protocol")


class GuardedHandler(web.RequestHandler):
    """aiohttp's protocol plus a header-read timeout, fair connection slots
    (``app/connections.py``), a write timeout and JSON errors."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.http = manager.http
        self.stats = manager.stats
        self._guard = manager
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_backlog = 0
        self._pool: ConnPool | None = None
        self._active = self._loop.time()
        self.client = ""
        self.stopping = False  # shut down by the server: a cancel here is not a hang-up

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        self.stopping = True
        await super().shutdown(timeout)

    # -- the slot ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        pool = self._guard.pool_for(transport)
        refused = pool.admit(self)
        self._sync_open()
        if refused is not None:
            # No request task, no parser work: a retryable 503 and the close.
            self.stats.refused += 1
            self._force_close = True  # data_received ignores anything that still arrives
            rid = uuid.uuid4().hex
            log.warning(
                "connection from %s refused: %d open (%s)",
                self.client,
                len(pool),
                refused,
                extra={"request_id": rid},
            )
            body = error_body("too_many_connections", f"{refused} reached; retry", rid)
            retry = f"Retry-After: {self.http.retry_after_s}\r\n"
            tr: Any = transport
            tr.write(raw_response(503, body, rid, retry))
            tr.close()  # flushes the 503 first
            return
        self._pool = pool
        super().connection_made(transport)
        limit_write_buffer(transport, self.http.write_buffer_bytes)  # app/writes.py
        self._arm_header_timer()  # the first request's headers are due from accept

    def connection_lost(self, exc: BaseException | None) -> None:
        self._give_back()
        self._cancel_header_timer()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def _give_back(self) -> None:
        if self._pool is not None:
            self._pool.release(self)
            self._pool = None
            self._sync_open()

    def _sync_open(self) -> None:
        self.stats.open = len(self._guard.data_pool)
        self.stats.peak = max(self.stats.peak, self.stats.open)

    def reclaimable(self) -> bool:
        """Idle between requests of a kept-alive connection: nothing read of the next one,
        nothing left to write."""
        return (
            self._request_count > 0
            and not self._force_close
            and self._waiter is not None
            and not self._waiter.done()
            and not self._messages
            and not self._request_in_progress
            and self._header_timer is None
            and not self.writing_paused
        )

    def last_active(self) -> float:
        return self._active

    def reclaim(self) -> None:
        """Closed to free its slot for a new connection (the pool already took it back)."""
        self._pool = None
        self.stats.reclaimed += 1
        self.force_close()

    # -- slow readers -----------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self.http.write_timeout_s > 0 and self._write_timer is None:
            self._write_backlog = self.buffered()
            self._write_timer = self._loop.call_later(
                self.http.write_timeout_s, self._write_timeout
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def buffered(self) -> int:
        tr: Any = self.transport
        return int(tr.get_write_buffer_size()) if tr is not None else 0

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timeout(self) -> None:
        """No byte of the answer taken by the client for ``write_timeout_s``: drop the
        connection and its buffered output (aborted, not flushed)."""
        self._write_timer = None
        tr: Any = self.transport
        if tr is None:
            return
        backlog = self.buffered()
        if backlog < self._write_backlog:  # progress: a slow reader, not a stalled one
            self._write_backlog = backlog
            self._write_timer = self._loop.call_later(
                self.http.write_timeout_s, self._write_timeout
            )
            return
        self.stats.write_timeouts += 1
        log.warning(
            "write timeout to %s: %d bytes not read in %gs; aborting",
            self.client,
            backlog,
            self.http.write_timeout_s,
        )
        self._force_close = True
        tr.abort()

    # -- headers ----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._active = self._loop.time()
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

    def __init__(
        self, base: web.Server, http: HttpConfig, stats: ConnStats, admin_ports: set[int]
    ) -> None:
        super().__init__(
            base.request_handler,
            request_factory=bounded_writes(base.request_factory, http.write_buffer_bytes),
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.http = http
        self.stats = stats
        self.admin_ports = admin_ports  # filled once the admin site listens
        self.data_pool = ConnPool(http.max_connections, http.max_connections_per_client)
        self.admin_pool = ConnPool(ADMIN_CONNECTIONS, 0)
        stats.pools[:] = [self.data_pool, self.admin_pool]

    def pool_for(self, transport: asyncio.BaseTransport) -> ConnPool:
        sock = transport.get_extra_info("sockname")
        port = sock[1] if isinstance(sock, tuple) and len(sock) > 1 else None
        return self.admin_pool if port in self.admin_ports else self.data_pool

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` (startup, cleanup, shutdown_timeout unchanged) whose connections are
    guarded, with aiohttp's own keep-alive and lingering timers set from the config."""

    def __init__(self, app: web.Application, http: HttpConfig, **kw: Any) -> None:
        super().__init__(
            app,
            keepalive_timeout=http.keepalive_timeout_s,
            lingering_time=http.lingering_s,
            # A client that hangs up cancels its handler: its queued model work is dropped
            # (rerank/pipeline.py) and it is counted as 499, instead of scored for no one.
            handler_cancellation=True,
            **kw,
        )
        self.http = http
        self.stats = ConnStats()
        self.admin_ports: set[int] = set()

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return GuardedServer(base, self.http, self.stats, self.admin_ports)


__all__ = ["GuardedHandler", "GuardedRunner", "GuardedServer"]
