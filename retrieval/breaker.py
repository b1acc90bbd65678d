"""A circuit breaker in front of a retrieval backend.

When the cluster keeps failing, every request would otherwise spend its budget waiting on
it and add to its load. After ``threshold`` consecutive failures the breaker opens: requests
fail at once with ``CircuitOpen`` (a 503) and nothing is sent. After ``cooldown_s`` one
request is let through as a probe (half-open); its success closes the breaker, its failure
opens it for another cool-down. A good readiness ping (``/readyz``) closes it too, so that
ready means searches work. Only failures of the cluster count (unreachable, timeouts, 5xx,
429, unreadable answers); a per-query error inside a 200 means the cluster is up.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import TypeVar

import numpy as np

from retrieval.backend import Backend
from retrieval.config import RetrievalConfig
from retrieval.errors import (
    BackendTimeout,
    BackendUnavailable,
    IndexMismatch,
    IndexMissing,
    KnnUnavailable,
    RetrievalError,
)
from retrieval.types import Depth, Hit, SubQuery

T = TypeVar("T")


class CircuitOpen(BackendUnavailable):
    """The breaker is open: the backend is not asked until the cool-down has passed."""


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = RetrievalConfig.breaker_failures,
        cooldown_s: float = RetrievalConfig.breaker_cooldown_s,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("threshold must be >= 1 and cooldown_s >= 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = State.CLOSED
        self.opened = 0  # times the breaker opened, for logs and tests

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go out (0 when closed)."""
        if self.state is State.CLOSED:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def before(self) -> None:
        """Call before each request to the backend; raises ``CircuitOpen`` to skip it."""
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN and self._clock() >= self._opened_at + self.cooldown_s:
            self.state = State.HALF_OPEN
            self._probing = False
        if self.state is State.HALF_OPEN and not self._probing:
            self._probing = True  # this request is the probe; the others still fail fast
            return
        raise CircuitOpen(
            f"circuit open after {self.threshold} consecutive failures; "
            f"next probe in {self.retry_after_s():.1f}s"
        )

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self.state = State.CLOSED

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self.state is State.HALF_OPEN or self._failures >= self.threshold:
            if self.state is not State.OPEN:
                self.opened += 1
            self.state = State.OPEN
            self._opened_at = self._clock()

    def abandon(self) -> None:
        """The request was cancelled before the backend answered: no verdict either way,
        but a probe slot it held must be given back."""
        self._probing = False


class GuardedBackend:
    """Wraps a backend so that its whole-chunk failures feed a ``CircuitBreaker``.

    A timeout counts only when the backend was given at least ``min_timeout_s``: a client
    asking for a 2 ms budget says nothing about the cluster, and must not open the breaker
    for everyone else."""

    def __init__(
        self, backend: Backend, breaker: CircuitBreaker, min_timeout_s: float = 0.05
    ) -> None:
        self._backend = backend
        self.breaker = breaker
        self.min_timeout_s = min_timeout_s
        self.name: str = backend.name

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: Depth, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        return await self._guard(lambda: self._backend.search_chunk(queries, k, deadline))

    async def search_knn(
        self, vector: np.ndarray, k: int, deadline: float | None = None
    ) -> list[Hit]:
        return await self._guard(lambda: self._backend.search_knn(vector, k, deadline))

    def queue_age(self) -> float:
        return self._backend.queue_age()

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        self.breaker.before()
        try:
            result = await call()
        except (IndexMissing, IndexMismatch, KnnUnavailable):
            self.breaker.success()  # the cluster answered; the index is a set-up problem
            raise
        except BackendTimeout as exc:
            if exc.timeout_s >= self.min_timeout_s:
                self.breaker.failure()
            else:
                self.breaker.abandon()
            raise
        except BackendUnavailable:
            self.breaker.failure()
            raise
        except BaseException:
            self.breaker.abandon()
            raise
        self.breaker.success()
        return result

    async def ping(self) -> bool:
        """A good ping is a good probe: it closes the breaker, so that a ready service
        (/readyz 200) also searches, instead of failing fast until the cool-down ends. A
        failed ping does not count: probes of readiness must not open it for everyone."""
        up = await self._backend.ping()
        if up and self.breaker.state is not State.CLOSED:
            self.breaker.success()
        return up

    @property
    def problem(self) -> str | None:
        """Why the backend is not ready, when it knows (see ``ElasticBackend.problem``)."""
        return getattr(self._backend, "problem", None)

    async def num_docs(self) -> int | None:
        return await self._backend.num_docs()

    async def check(self) -> None:
        await self._backend.check()

    async def check_knn(self) -> None:
        await self._backend.check_knn()

    async def close(self) -> None:
        await self._backend.close()
