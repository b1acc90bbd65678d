"""Back-pressure: a bounded number of requests admitted to the scoring endpoints.

The engine has one scoring queue; every request admitted adds batches to it. Past a
bound, queueing more only makes every request miss its budget, so a request over the bound
gets ``503`` with ``Retry-After`` at once. A request is counted only once its body is read
(``app/body.py`` runs first), so a slow upload holds no slot. The requests already
admitted keep their budget: the queue in front of them cannot grow.

The bound alone is not enough: retrieval is not bounded by the ranking budget (a cluster
takes 10-100 ms), so a search that queued 400 ms for the embedded index's search thread
still comes back complete, nothing calls it late, and the bound climbs to its ceiling
(measured at 2x the sustainable rate: goodput 0.4 req/s). So admission also watches the
local queue itself, CoDel-style: when the oldest search waiting for the embedded index's
search thread (``Backend.queue_age``) has waited over a target for a whole interval, the
queue is standing and new searches are shed at once until it drains (reranks do not use
that thread); a short burst passes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.errors import ApiError, OverTimeLimit, from_domain
from app.http import META, SERVICES, Handler, InFlight, error_response
from app.paths import SCORING_PATHS, SEARCH
from retrieval.breaker import CircuitBreaker, State


def overloaded(retry_after_s: int) -> web.Response:
    resp = error_response(
        503, "overloaded", "too many requests in flight; retry after the Retry-After delay"
    )
    resp.headers["Retry-After"] = str(retry_after_s)
    return resp


FLOOR = 2  # the bound never falls below this: a lone request is always admitted
BACKOFF_S = 0.1  # at most one decrease per this long
DECREASE = 0.8


@dataclass
class AdaptiveLimit:
    """The admission bound, moved by the outcome of each answered scoring request (AIMD):
    searches and reranks share the one scoring queue, so either one coming back late says
    the queue is too long."""

    ceiling: int
    limit: float = field(init=False)
    decreased_at: float = -math.inf
    late_at: float = -math.inf  # the last late answer, cut or not

    def __post_init__(self) -> None:
        self.limit = float(self.ceiling)

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    def on_time(self) -> None:
        """+1 per bound's worth of complete answers, but only once none has come back late
        for ``BACKOFF_S`` (as TCP holds its window during recovery): the cuts are spaced out,
        so growing between them let ~30% of answers come back partial at 2x the rate."""
        if time.monotonic() - self.late_at >= BACKOFF_S:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    def late(self) -> None:
        now = self.late_at = time.monotonic()
        if now - self.decreased_at >= BACKOFF_S:
            self.decreased_at = now
            self.limit = max(float(min(FLOOR, self.ceiling)), self.limit * DECREASE)


@dataclass
class StandingQueue:
    """CoDel's test for a standing queue: the wait has stayed above ``target_s`` for
    ``interval_s`` on end. The wait sampled is the age of the oldest waiter, so one sample
    already says since when it has been over the target (its age less the target); earlier
    samples extend that back only while they come less than an interval apart (nothing is
    known of the time between two far-apart samples)."""

    target_s: float
    interval_s: float
    above_since: float | None = None
    last_sample: float = -math.inf

    def building(self, now: float) -> bool:
        """Over the target at the last sample, and that sample is recent (within an
        interval): a queue may be building. An old sample says nothing."""
        return self.above_since is not None and now - self.last_sample <= self.interval_s

    def standing(self, wait_s: float, now: float) -> bool:
        if wait_s <= self.target_s or now - self.last_sample > self.interval_s:
            self.above_since = None
        self.last_sample = now
        if wait_s <= self.target_s:
            return False
        since = now - (wait_s - self.target_s)
        self.above_since = since if self.above_since is None else min(self.above_since, since)
        return now - self.above_since >= self.interval_s


class LoopLag:
    """How late the event loop runs a timer: the wait of everything queued on the loop.
    ``now()`` also counts a tick that is overdue, so a stuck loop reads as lagging before
    the tick finally runs."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self.last = 0.0
        self._due = math.inf

    def now(self) -> float:
        return max(self.last, time.monotonic() - self._due)

    async def run(self) -> None:
        try:
            while True:
                self._due = time.monotonic() + self.PERIOD_S
                await asyncio.sleep(self.PERIOD_S)
                self.last = max(0.0, time.monotonic() - self._due)
        finally:  # stopped: nothing is overdue any more
            self._due, self.last = math.inf, 0.0


def _status_of(exc: Exception) -> int:
    if isinstance(exc, ApiError | web.HTTPException):
        return exc.status
    mapped = from_domain(exc)
    return mapped.status if mapped is not None else 500


def _was_late(request: web.Request, status: int, exc: Exception | None) -> bool | None:
    """True: late or incomplete (504; a partial 200: a budget cut scoring or a retrieval
    part was lost; a rerank that could not score every document within the server's limit,
    ``over_time_limit``); False: complete and on time; None: says nothing of load (a 4xx; a
    failed dependency, which the breaker handles)."""
    if status == 504 or isinstance(exc, OverTimeLimit):
        return True
    meta = request.get(META)
    if status != 200 or meta is None:
        return None
    return meta.partial


LocalWait = Callable[[web.Application], float]  # seconds the oldest local waiter has waited


def admission_middleware(
    in_flight: InFlight,
    bound: AdaptiveLimit,
    retry_after_s: int,
    queue: StandingQueue,
    local_wait: LocalWait,
    on_shed: Callable[[str], None] = lambda reason: None,
    paths: Collection[str] = SCORING_PATHS,
) -> Middleware:
    """``on_shed`` is told why each refused request was refused."""

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in paths:
            return await handler(request)
        searches = request.path == SEARCH.path  # only they wait for the search thread
        if searches and queue.standing(local_wait(request.app), time.monotonic()):
            on_shed("standing_queue")  # the shed protects the thread: the shared bound,
            return overloaded(retry_after_s)  # which reranks use too, is left alone
        if not in_flight.admit(bound.current):
            on_shed("in_flight_limit")
            return overloaded(retry_after_s)
        status, failure = 500, None
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except asyncio.CancelledError:
            status = 499  # a hang-up says nothing about load
            raise
        except Exception as exc:
            status, failure = _status_of(exc), exc
            raise
        finally:
            in_flight.release()
            late = None if status == 499 else _was_late(request, status, failure)
            if late is True:
                bound.late()
            elif late is False and not queue.building(time.monotonic()):
                bound.on_time()  # complete, and no queue building up behind it

    return admit


def retry_after_middleware(retry_after_s: int) -> Middleware:
    """Every 503 and 504 (overload, Elasticsearch down or slow, breaker open, draining)
    tells the client when to come back, so well-behaved clients back off instead of
    retrying at once. While the breaker is open that is when its next probe may go out."""

    @web.middleware
    async def stamp(request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        if resp.status in (503, 504) and "Retry-After" not in resp.headers:
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
