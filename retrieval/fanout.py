"""Dedup -> chunk -> concurrent chunk searches -> union by doc id, streamed chunk by chunk.

Chunks are yielded in completion order so scoring can start on the first hits while later
chunks are still in flight (the overlap the service is built around).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.backend import Backend
from retrieval.chunking import split
from retrieval.dedup import dedup
from retrieval.errors import (
    BackendTimeout,
    BackendUnavailable,
    IndexMismatch,
    IndexMissing,
    InvalidQuery,
    KnnUnavailable,
    RetrievalError,
    RetrievalTimeout,
)
from retrieval.trace import ChunkTrace
from retrieval.types import (
    Depth,
    Hit,
    LostPart,
    PartialHits,
    RetrievalReport,
    SubQuery,
    depths,
)


@dataclass(frozen=True)
class ChunkHits:
    chunk: int
    new: list[Hit]  # candidates not seen in earlier chunks, best retrieval score first
    share: float  # this chunk's fraction of the unique queries
    arrived: float  # time.monotonic() when its answer came (ranking's budget counts from the last)
    # The kNN part's hits: each came with its stored vector, so scoring them is a dot
    # product, and they are scored on top of the lexical candidates (no slot taken).
    extra: bool = False


@dataclass(frozen=True)
class KnnAsk:
    """Hybrid retrieval's vector part: the ``k`` stored vectors nearest the query's, asked
    as soon as ``vector()`` (the query's encoding, started with the request) resolves. None
    from it: there is no query vector (the part is lost, the rest answers)."""

    vector: Callable[[], Awaitable[np.ndarray | None]]
    k: int


class RetrievalRun:
    """One request's retrieval. Iterate ``stream()``; afterwards call
    ``raise_if_unanswered()`` (the stream may have been closed at the deadline before it
    could raise), then read ``candidates()`` and ``report``.

    ``k``: hits wanted, for every query or per position (queries that dedup into one get
    the deepest of theirs). ``labels`` name the query positions in error messages
    (``subqueries[2]``)."""

    def __init__(
        self,
        backend: Backend,
        queries: Sequence[SubQuery],
        k: Depth,
        n_chunks: int,
        deadline: float | None = None,
        labels: Sequence[str] | None = None,
        trace: ChunkTrace | None = None,
        knn: KnnAsk | None = None,
    ) -> None:
        self._backend = backend
        self._knn = knn
        self._trace = trace  # None: tracing off, no span is made
        self._labels = list(labels or (f"query {i}" for i in range(len(queries))))
        self._deadline = deadline
        self._dd = dedup(queries)
        self._chunks = split(range(len(self._dd.unique)), n_chunks)
        ks = depths(k, len(queries))
        self._k = [max(ks[p] for p in origins) for origins in self._dd.origins]
        self._best: dict[str, Hit] = {}
        self._per_unique: list[list[str]] = [[] for _ in self._dd.unique]
        self._answered: set[int] = set()  # unique queries that got hits (maybe none)
        self._timed_out = False  # some part was lost to a deadline
        self._other_loss = False  # some part was lost to anything else
        # An index fault (missing, or lacking a configured field) is the answer's cause.
        self._missing_index: IndexMissing | IndexMismatch | KnnUnavailable | None = None
        self.report = RetrievalReport(unique_queries=len(self._dd.unique), chunks=len(self._chunks))
        self._t0 = 0.0  # perf_counter() when the stream started: report times count from it

    async def _one(self, c: int, members: list[int]) -> tuple[int, list[int], object]:
        if self._trace is None:
            return await self._search(c, members)
        with self._trace.chunk(c, len(members)) as span:
            out = await self._search(c, members)
            if span is not None:
                span.done(out[2])
            return out

    async def _search(self, c: int, members: list[int]) -> tuple[int, list[int], object]:
        qs = [self._dd.unique[u] for u in members]
        t0 = time.perf_counter()
        try:
            ks = [self._k[u] for u in members]
            hits = await self._backend.search_chunk(qs, ks, self._deadline)
        except RetrievalError as exc:
            return c, members, exc
        self.report.chunk_seconds.append(time.perf_counter() - t0)
        return c, members, hits

    async def _knn_part(self, c: int) -> tuple[int, list[int], object]:
        assert self._knn is not None
        try:
            vector = await self._knn.vector()
            if vector is None:
                return (
                    c,
                    [],
                    RetrievalError(
                        "kNN: no query vector (a cross-encoder has none, or its encoding failed)"
                    ),
                )
            hits = await self._backend.search_knn(vector, self._knn.k, self._deadline)
        except RetrievalError as exc:
            return c, [], exc
        self.report.knn_seconds = time.perf_counter() - self._t0
        return c, [], hits

    def _origins(self, members: Sequence[int]) -> tuple[int, ...]:
        return tuple(sorted(p for u in members for p in self._dd.origins[u]))

    async def stream(self) -> AsyncGenerator[ChunkHits, None]:
        self._t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(self._one(c, m)) for c, m in enumerate(self._chunks)]
        knn_chunk = len(tasks) if self._knn is not None else None
        if knn_chunk is not None:
            tasks.append(asyncio.ensure_future(self._knn_part(knn_chunk)))
        answered: set[int] = set()
        total = max(1, len(self._dd.unique))
        try:
            for fut in asyncio.as_completed(tasks):
                c, members, result = await fut
                arrived = time.monotonic()
                answered.add(c)
                self.report.seconds = time.perf_counter() - self._t0
                if isinstance(result, RetrievalError):
                    self._lose(c, members, result, knn=c == knn_chunk)
                    continue
                assert isinstance(result, list)
                if c == knn_chunk:
                    yield ChunkHits(c, self._merge_knn(result), 0.0, arrived, extra=True)
                    continue
                new = self._merge(c, members, result)
                share = len(members) / total
                yield ChunkHits(c, sorted(new, key=lambda h: -h.score), share, arrived)
        finally:
            # Closed early (the request's deadline passed): what has not answered is lost.
            members_of = [*self._chunks, []]  # the kNN part, if asked, is the last task
            for c, task in enumerate(tasks):
                if c not in answered:
                    task.cancel()
                    self._lose(c, members_of[c], None, knn=c == knn_chunk)
            await asyncio.gather(*tasks, return_exceptions=True)
            self.report.per_origin = self._dd.fan_back(self._per_unique)
            self.report.lost.sort(key=lambda p: p.chunk)
        self.raise_if_unanswered()

    def _lose(
        self, c: int, members: list[int], error: RetrievalError | None, knn: bool = False
    ) -> None:
        """A part that brought no hits (``error`` None: its deadline came first), named in
        the report, and what an unanswered request will then raise: a timeout when only
        deadlines were missed, the index's fault when there was one."""
        late = "kNN: no answer before the deadline" if knn else "no answer before the deadline"
        origins = () if knn else self._origins(members)
        self.report.lost.append(LostPart(c, origins, late if error is None else str(error), knn))
        if error is None or isinstance(error, BackendTimeout):
            self._timed_out = True
            return
        self._other_loss = True
        if isinstance(error, IndexMissing | IndexMismatch | KnnUnavailable):
            self._missing_index = error

    def raise_if_unanswered(self) -> None:
        """No query got an answer: a failed retrieval, never an empty result. A deadline
        alone (nothing else went wrong) is a ``RetrievalTimeout``."""
        if (not self._chunks and self._knn is None) or self._answered:
            return
        if self._missing_index is not None:
            raise self._missing_index
        first = self.report.lost[0].error if self.report.lost else "no answer"
        if self._timed_out and not self._other_loss:
            why = "" if "deadline" in first else f" ({first})"
            raise RetrievalTimeout(f"{self._backend.name}: no answer before the deadline{why}")
        raise BackendUnavailable(f"{self._backend.name}: every query failed: {first}")

    def _merge(
        self, c: int, members: list[int], result: list[list[Hit] | RetrievalError]
    ) -> list[Hit]:
        """Union one chunk's hits into the pool; returns the candidates it adds."""
        new: dict[str, Hit] = {}
        for u, hits in zip(members, result, strict=True):
            if isinstance(hits, InvalidQuery):
                # The caller's query is wrong: a 4xx naming it, not a quietly lost part.
                label = self._labels[self._dd.origins[u][0]]
                raise type(hits)(f"{label}: {hits}", label)
            if isinstance(hits, RetrievalError):
                if isinstance(hits, IndexMissing):
                    self._missing_index = hits
                self.report.lost.append(LostPart(c, self._origins([u]), str(hits)))
                self._other_loss = True
                continue
            self._answered.add(u)
            if isinstance(hits, PartialHits):  # usable, but the cluster says not complete
                self.report.lost.append(LostPart(c, self._origins([u]), hits.reason))
            self._per_unique[u] = [h.doc_id for h in hits]
            for h in hits:
                seen = self._best.get(h.doc_id)
                if seen is None or h.score > seen.score:
                    if seen is not None and seen.similarity is not None:  # found by kNN too
                        h = dataclasses.replace(h, similarity=seen.similarity)
                    self._best[h.doc_id] = h
                    if seen is None or h.doc_id in new:
                        new[h.doc_id] = h
        return list(new.values())

    def _merge_knn(self, hits: list[Hit]) -> list[Hit]:
        """Union the kNN part's hits (``score``: their similarity) into the pool; returns
        those no lexical query found, best first. Both scores are kept: a document found
        by both keeps its lexical score, one found by kNN alone has a lexical score of 0."""
        self.report.knn_ids = [h.doc_id for h in hits]
        self._answered.add(-1)  # the request is answered even if every lexical part failed
        new: list[Hit] = []
        for h in hits:
            seen = self._best.get(h.doc_id)
            if seen is None:
                self._best[h.doc_id] = hit = dataclasses.replace(h, score=0.0, similarity=h.score)
                new.append(hit)
            else:
                vec = seen.vector if seen.vector is not None else h.vector
                self._best[h.doc_id] = dataclasses.replace(seen, similarity=h.score, vector=vec)
        return new

    def candidates(self) -> list[Hit]:
        """The union, each doc at its best retrieval score, best first (then kNN-only
        documents by similarity)."""
        return sorted(self._best.values(), key=lambda h: (-h.score, -(h.similarity or 0.0)))
