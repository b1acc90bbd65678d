"""Split unique queries into N near-equal chunks, each sent as one concurrent ``_msearch``.

N trades per-request overhead against parallelism; it is chosen so that Elasticsearch time
is about the scoring time, letting the two overlap fully.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def split(items: Sequence[T], n_chunks: int) -> list[list[T]]:
    if n_chunks < 1:
        raise ValueError("n_chunks must be >= 1")
    n = min(n_chunks, len(items))
    if n == 0:
        return []
    size, extra = divmod(len(items), n)
    out: list[list[T]] = []
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out
