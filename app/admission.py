"""Back-pressure: a bounded number of requests admitted to the scoring endpoints.

The engine has one scoring queue; every request admitted adds batches to it. Past a
bound, queueing more only makes every request miss its budget, so a request over the bound
gets ``503`` with ``Retry-After`` at once. A request is counted only once its body is read
(``app/body.py`` runs first), so a slow upload holds no slot. The requests already
admitted keep their budget: the queue in front of them cannot grow.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.http import SCORING_PATHS, SERVICES, Handler, InFlight, error_response
from retrieval.breaker import CircuitBreaker, State


def overloaded(retry_after_s: int) -> web.Response:
    resp = error_response(
        503, "overloaded", "too many requests in flight; retry after the Retry-After delay"
    )
    resp.headers["Retry-After"] = str(retry_after_s)
    return resp


def admission_middleware(
    in_flight: InFlight, limit: int, retry_after_s: int, paths: Collection[str] = SCORING_PATHS
) -> Middleware:
    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in paths:
            return await handler(request)
        if not in_flight.admit(limit):
            return overloaded(retry_after_s)
        try:
            return await handler(request)
        finally:
            in_flight.release()

    return admit


def retry_after_middleware(retry_after_s: int) -> Middleware:
    """Every 503 (overload, Elasticsearch down, breaker open, draining) tells the client when
    to come back, so well-behaved clients back off instead of retrying at once. While the
    breaker is open that is when its next probe may go out."""

    @web.middleware
    async def stamp(request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        if resp.status == 503 and "Retry-After" not in resp.headers:
            wait = max(retry_after_s, _breaker_wait(request.app))
            resp.headers["Retry-After"] = str(wait)
        return resp

    return stamp


def _breaker_wait(app: web.Application) -> int:
    svc = app.get(SERVICES)
    breaker = getattr(svc.backend, "breaker", None) if svc is not None else None
    if not isinstance(breaker, CircuitBreaker) or breaker.state is State.CLOSED:
        return 0
    return math.ceil(breaker.retry_after_s())
