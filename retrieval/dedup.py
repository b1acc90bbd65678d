"""Collapse identical sub-queries so each is sent once, keeping the way back to every origin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.types import SubQuery


@dataclass(frozen=True)
class Deduped:
    unique: list[SubQuery]
    origins: list[list[int]]  # origins[u] = positions in the input that asked unique[u]

    def fan_back(self, per_unique: Sequence[list[str]]) -> list[list[str]]:
        """Give each original position the results of its unique query."""
        n = sum(len(o) for o in self.origins)
        out: list[list[str]] = [[] for _ in range(n)]
        for u, positions in enumerate(self.origins):
            for pos in positions:
                out[pos] = list(per_unique[u])
        return out


def dedup(queries: Sequence[SubQuery]) -> Deduped:
    index: dict[SubQuery, int] = {}
    unique: list[SubQuery] = []
    origins: list[list[int]] = []
    for pos, q in enumerate(queries):
        u = index.get(q)
        if u is None:
            index[q] = u = len(unique)
            unique.append(q)
            origins.append([])
        origins[u].append(pos)
    return Deduped(unique, origins)
