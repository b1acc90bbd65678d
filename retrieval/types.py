"""Plain data passed between retrieval stages and out to the caller."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson


@dataclass(frozen=True)
class SubQuery:
    """One retrieval query. Frozen and hashable: equality is what dedup keys on."""

    kind: Literal["match", "ids", "dsl"]
    text: str = ""  # match: the normalised text; dsl: the query object's canonical JSON
    field: str | None = None  # None: every text field
    ids: tuple[str, ...] = ()

    @classmethod
    def match(cls, text: str, field: str | None = None) -> SubQuery:
        # Whitespace and case do not change a BM25 query, so they must not defeat dedup.
        return cls("match", " ".join(text.split()).lower(), field)

    @classmethod
    def by_ids(cls, ids: list[str]) -> SubQuery:
        return cls("ids", ids=tuple(sorted(set(ids))))

    @classmethod
    def dsl(cls, query: dict[str, Any]) -> SubQuery:
        """A query DSL object, kept as canonical JSON (sorted keys, no whitespace) so that
        equal queries written differently are one query to dedup."""
        return cls("dsl", orjson.dumps(query, option=orjson.OPT_SORT_KEYS).decode())

    def dsl_query(self) -> dict[str, Any]:
        """The query object of a ``dsl`` sub-query, as the caller sent it (keys sorted)."""
        assert self.kind == "dsl"
        out: dict[str, Any] = orjson.loads(self.text)
        return out


Depth = int | Sequence[int]  # hits wanted: one number for every query, or one per query


def depths(k: Depth, n: int) -> list[int]:
    """``k`` as one number per query (``n`` of them)."""
    if isinstance(k, int):
        return [k] * n
    if len(k) != n:
        raise ValueError(f"{len(k)} depths for {n} queries")
    return list(k)


@dataclass(frozen=True)
class Document:
    """A document as stored: corpora yield these, indexers load them."""

    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Hit(Document):
    """A document as a search returns it: with its retrieval score."""

    score: float  # lexical (the query's BM25 or the caller's DSL); 0 when found by kNN only
    # The document's index-time embedding, when the index stores one (bi-encoders).
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    # Cosine of the query's vector and the stored one, when the kNN part found it (hybrid).
    similarity: float | None = None


class PartialHits(list[Hit]):
    """Hits of one query the backend flagged as incomplete (a shard failed or timed out):
    they are used, and the response says the query was only partly answered."""

    def __init__(self, hits: list[Hit], reason: str) -> None:
        super().__init__(hits)
        self.reason = reason


@dataclass(frozen=True)
class LostPart:
    """A chunk (or one query of it) that failed; the rest of the request still answers."""

    chunk: int
    origins: tuple[int, ...]  # positions of the queries lost; () for the kNN part
    error: str
    knn: bool = False  # the kNN part (hybrid retrieval) was lost


@dataclass
class RetrievalReport:
    """What the fan-out did, for the response and the logs."""

    unique_queries: int = 0
    chunks: int = 0
    lost: list[LostPart] = field(default_factory=list)
    per_origin: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0
    chunk_seconds: list[float] = field(default_factory=list)  # round trip of each answer
    knn_ids: list[str] | None = None  # the kNN part's hits, best first (None: no kNN part)
    knn_seconds: float | None = None  # from the request's start to the kNN part's answer
