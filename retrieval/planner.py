"""How many concurrent chunks a request's unique queries go out in.

A chunk earns its own round trip when scoring its hits takes about as long as fetching
them. Fewer chunks and the scorer idles waiting for the first hits; more and
Elasticsearch pays per-request overhead for hits the scorer cannot take yet anyway. So,
from what recent requests measured: N ≈ scoring time / one chunk's round trip, clamped to
[1, max_chunks] and to the number of unique queries. With index-time vectors scoring is a
few ms and N falls to 1-2; with a cross-encoder scoring dominates and N rises.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


class ChunkPlanner:
    def __init__(
        self, fixed: int = 0, initial: int = 4, max_chunks: int = 8, alpha: float = 0.2
    ) -> None:
        """``fixed`` > 0 turns adaptation off (always that many chunks)."""
        self.fixed, self.initial, self.max_chunks, self._alpha = fixed, initial, max_chunks, alpha
        self.es_s: float | None = None  # smoothed round trip of one chunk
        self.scoring_s: float | None = None  # smoothed scoring time of one request

    def chunks(self, unique_queries: int) -> int:
        if self.fixed:
            n = self.fixed
        elif self.es_s is None or self.scoring_s is None:
            n = self.initial
        else:
            n = round(self.scoring_s / max(self.es_s, 1e-4))
        return max(1, min(n, self.max_chunks, unique_queries))

    def observe(self, chunk_seconds: Sequence[float], scoring_seconds: float) -> None:
        """One finished request: its chunks' round trips and its scoring time."""
        if chunk_seconds:
            self.es_s = self._smooth(self.es_s, statistics.median(chunk_seconds))
        if scoring_seconds > 0:
            self.scoring_s = self._smooth(self.scoring_s, scoring_seconds)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self._alpha * (new - old)


__all__ = ["ChunkPlanner"]
