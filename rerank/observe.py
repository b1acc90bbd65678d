"""What the engine reports about its own work, for whoever wants to watch (metrics, logs).

``rerank`` must not know about Prometheus or HTTP, so it calls this small protocol; the
service plugs in an implementation (``app/metrics.py``). The default does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rerank.types import CallResult


class EngineObserver(Protocol):
    def batch(self, *, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        """One model call: texts in it, tokens that carried text vs. tokens computed, time."""

    def queue_wait(self, seconds: float) -> None:
        """Time one request's work waited before its model call started."""

    def cache(self, *, hits: int, misses: int) -> None:
        """Document-embedding cache lookups for one request."""


class NullObserver:
    def batch(self, *, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def cache(self, *, hits: int, misses: int) -> None:
        pass


class CallTrace(Protocol):
    """One request's tracing handle, carried by its queued items (``app/otel_spans.py``
    implements it; None when tracing is off, and then nothing here runs)."""

    def model_call(
        self,
        traces: Sequence[CallTrace],
        started_ns: int,
        size: int,
        result: CallResult | None,
        error: BaseException | None = None,
    ) -> None:
        """A model call this request's items led (the first traced item of the batch):
        ``traces`` holds the handles of every traced item in it, this one's included, so
        the one span of the call links the other requests that shared it."""


__all__ = ["CallTrace", "EngineObserver", "NullObserver"]
