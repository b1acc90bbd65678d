"""Back-pressure: a bounded number of requests admitted to the scoring endpoints.

The engine has one scoring queue; every request admitted adds batches to it. Past a
bound, queueing more only makes every request miss its budget, so a request over the bound
gets ``503`` with ``Retry-After`` at once, before its body is read. The requests already
admitted keep their budget: the queue in front of them cannot grow.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.routes import SERVICES, json_response
from retrieval.breaker import CircuitBreaker, State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUARDED = frozenset({"/v1/search", "/v1/rerank"})


@dataclass
class Admission:
    """Counts requests in flight. Mutable on purpose (the app is frozen once it runs)."""

    limit: int
    in_flight: int = 0
    peak: int = 0
    admitted: int = 0
    rejected: int = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            self.rejected += 1
            return False
        self.in_flight += 1
        self.admitted += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def leave(self) -> None:
        self.in_flight -= 1


ADMISSION = web.AppKey("admission", Admission)


def overloaded(retry_after_s: int) -> web.Response:
    resp = json_response(
        {
            "error": {
                "code": "overloaded",
                "message": "too many requests in flight; retry after the Retry-After delay",
                "field": None,
            }
        },
        status=503,
    )
    resp.headers["Retry-After"] = str(retry_after_s)
    return resp


def admission_middleware(
    admission: Admission, retry_after_s: int, paths: Collection[str] = GUARDED
) -> Middleware:
    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in paths:
            return await handler(request)
        if not admission.try_enter():
            return overloaded(retry_after_s)
        try:
            return await handler(request)
        finally:
            admission.leave()

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
