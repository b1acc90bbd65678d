"""Reading request bodies before admission: a declared size over the limit is refused
before a byte is read, a body must arrive within ``body_timeout_s``, and a client that goes
away mid-body is :class:`~app.errors.ClientGone` (499), not a server error.

The middleware runs after auth and before admission, so a slow upload never holds an
admission slot. ``request.read()`` caches the bytes: the handler's ``parse()`` reads them
again for free; once the handler has answered, the cache is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from app.errors import ApiError, ClientGone
from app.http import Handler


def too_large(declared: int | None, limit: int) -> ApiError:
    said = f"Content-Length {declared}" if declared is not None else "larger than"
    return ApiError(
        413, "body_too_large", f"body: {said} is over the limit of {limit} bytes", "body"
    )


# JSON bodies only. Accepted: no Content-Type, JSON (``application/json``, ``*/*+json``) and
# ``application/octet-stream`` (what HTTP libraries call raw bytes; a browser cannot send it
# cross-site without a CORS preflight). Refused with 415: everything else, in particular
# the types a browser sends cross-site with no preflight (form posts, ``text/plain``): with
# keys off, another site could otherwise make a visitor's browser call the service.
# ``curl -d`` sends a form type: use ``--json`` or ``-H 'Content-Type: application/json'``.
ACCEPTED_TYPES = frozenset({"application/json", "application/octet-stream"})


def check_content_type(request: web.Request) -> None:
    raw = request.headers.get("Content-Type", "")
    if not raw.strip():
        return
    media = raw.partition(";")[0].strip().lower()
    if media in ACCEPTED_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {media or raw!r} is not JSON: send application/json "
        "(curl: --json, or -H 'Content-Type: application/json')",
        "Content-Type",
    )


def body_middleware(max_body_bytes: int, body_timeout_s: float) -> Middleware:
    @web.middleware
    async def read_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        check_content_type(request)  # before a byte is read
        declared = request.content_length
        if declared is not None and declared > max_body_bytes:
            raise too_large(declared, max_body_bytes)  # answered with Connection: close
        deadline = asyncio.timeout(body_timeout_s)
        try:
            async with deadline:
                await request.read()  # raises 413 past client_max_size (chunked, lying)
        except web.HTTPRequestEntityTooLarge as exc:
            raise too_large(None, max_body_bytes) from exc
        except (web.RequestPayloadError, ClientPayloadError, HttpProcessingError) as exc:
            # A body the parser cannot decode (corrupt gzip or deflate, bad chunking): the
            # client's fault, named, never a 500 with a traceback.
            cause = exc.__cause__ or exc
            raise ApiError(
                400, "malformed_body", f"body could not be read: {' '.join(str(cause).split())}"
            ) from exc
        except OSError as exc:  # TimeoutError is an OSError too: ours, or the socket's?
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise ApiError(
                    408, "body_timeout", f"body: not received within {body_timeout_s:g}s", "body"
                ) from exc
            # aiohttp sets ConnectionResetError("Connection lost") on the payload, or the
            # transport's own error (ECONNRESET, ETIMEDOUT from TCP keepalive...).
            raise ClientGone(f"{type(exc).__name__}: {exc}") from exc
        try:
            return await handler(request)
        finally:
            # Answered: the bytes (aiohttp's read cache) are not needed to write the answer,
            # which a slow reader may take long to take (app/writes.py).
            request._read_bytes = None

    return read_body


def expect_within_limit(
    max_body_bytes: int,
) -> Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse | None]]:
    """An ``expect_handler``: ``100 Continue`` only for a body we would accept. aiohttp's
    default says 100 to anything, before any middleware runs; here a too-large upload gets
    the middleware's 413 and the client never sends it."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Expect", "").lower() != "100-continue":
            return None  # the middleware chain answers
        declared = request.content_length
        if declared is None or declared <= max_body_bytes:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's default does
        return None

    return expect


def guard_expect(app: web.Application, max_body_bytes: int) -> None:
    """Give every POST route the bounded ``expect_handler`` (routes are added elsewhere)."""
    expect = expect_within_limit(max_body_bytes)
    for route in app.router.routes():
        if route.method == "POST":
            route._expect_handler = expect
