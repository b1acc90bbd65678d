"""What the engine reports about its own work, for whoever wants to watch (metrics, logs).

``rerank`` must not know about Prometheus or HTTP, so it calls this small protocol; the
service plugs in an implementation (``app/metrics.py``). The default does nothing.
"""

from __future__ import annotations

from typing import Protocol


class EngineObserver(Protocol):
    def batch(self, *, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        """One model call: texts in it, tokens that carried text vs. tokens computed, time."""

    def queue_wait(self, seconds: float) -> None:
        """Time one request's work waited before its model call started."""

    def cache(self, *, hits: int, misses: int) -> None:
        """Document-embedding cache lookups for one request."""

    def pair_cache(self, *, hits: int, misses: int) -> None:
        """Cross-encoder score cache lookups for one request."""

    def cache_evicted(self, *, cache: str, count: int) -> None:
        """Entries a cache (``embedding`` or ``pair``) dropped to stay within its bytes."""


class NullObserver:
    def batch(self, *, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def cache(self, *, hits: int, misses: int) -> None:
        pass

    def pair_cache(self, *, hits: int, misses: int) -> None:
        pass

    def cache_evicted(self, *, cache: str, count: int) -> None:
        pass


__all__ = ["EngineObserver", "NullObserver"]
