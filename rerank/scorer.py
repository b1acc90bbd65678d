"""One request's scoring: documents submitted as retrieval chunks arrive, waited on until
done or the deadline, then collected (``Collected``). The query itself is encoded once per
request.

The engine (``rerank/engine.py``) runs the model; this holds only the request's futures and
uses of the engine only what ``EngineView`` names (``ScoringEngine`` is one).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rerank.batcher import MicroBatcher, Sink
from rerank.cache import EmbeddingCache, PairCache, embedding_sinks, pair_sinks
from rerank.due import Due
from rerank.errors import WouldOverrun
from rerank.model import ModelKind
from rerank.observe import CallTrace, EngineObserver
from rerank.types import Doc, ItemResult, Passages, Seq, StageTimes

Future = asyncio.Future[ItemResult]
LOWEST_LOGIT = float(np.finfo(np.float32).min)


class EngineView(Protocol):
    """What a ``QueryScorer`` uses of the engine: the batcher it queues on, the caches it
    reads and fills, the model's kind, how texts become passage windows, where cache
    figures go."""

    @property
    def kind(self) -> ModelKind: ...
    @property
    def passages(self) -> Passages: ...
    @property
    def batcher(self) -> MicroBatcher: ...
    @property
    def cache(self) -> EmbeddingCache | None: ...
    @property
    def pair_cache(self) -> PairCache | None: ...
    @property
    def observer(self) -> EngineObserver: ...

    async def windows_async(self, texts: list[str], query: str | None = None) -> list[list[str]]:
        """Each text's passage windows (one unless best-passage scoring)."""
        ...


@dataclass
class Collected:
    """This stage's result: what one request's scorer got by the time it was collected."""

    scores: dict[str, float] = field(default_factory=dict)  # Doc.id -> model score
    times: StageTimes = field(default_factory=StageTimes)
    cache_hits: int = 0
    index_vectors: int = 0
    failure: BaseException | None = None


@dataclass
class _Pending:
    doc: Doc
    futures: list[Future]
    vectors: np.ndarray | None = None  # known without the model (cache, index)
    score: float | None = None  # a cross-encoder's score, known from the pair cache
    key: bytes = b""  # its pair-cache key

    @property
    def known(self) -> bool:
        return self.vectors is not None or self.score is not None


class QueryScorer:
    """Scores documents against one query for one request, possibly over several
    submissions as retrieval chunks arrive; the query itself is encoded once."""

    def __init__(
        self,
        engine: EngineView,
        query: str,
        deadline: float | Due | None = None,
        use_cache: bool = True,
        all_or_nothing: bool = False,
        trace: CallTrace | None = None,
    ) -> None:
        """``all_or_nothing``: the caller wants every document scored or an error, so
        :meth:`submit` raises :class:`WouldOverrun` when the work cannot fit the deadline.
        ``deadline``: a ``time.monotonic()`` instant, None, or a :class:`Due` that may still
        float (a search whose retrieval has not answered). ``trace``: the request's tracing
        handle, carried by its items (None: off)."""
        self._trace = trace
        self._engine = engine
        self._all_or_nothing = all_or_nothing
        self._query = query
        self.due = deadline if isinstance(deadline, Due) else Due.at_instant(deadline)
        self._use_cache = use_cache and (engine.cache is not None or engine.pair_cache is not None)
        self._pending: list[_Pending] = []
        self._query_future: Future | None = None

    @property
    def bi(self) -> bool:
        return self._engine.kind is ModelKind.BI_ENCODER

    def start(self) -> None:
        """Queue a bi-encoder's query now: its vector does not depend on the documents, so
        it is computed while retrieval runs instead of after it (nothing for a
        cross-encoder, whose inputs are the pairs)."""
        if self.bi and self._query_future is None:
            (self._query_future,) = self._engine.batcher.submit(
                [(self._query, None)], self.due, group=self, trace=self._trace
            )

    async def query_vector(self) -> np.ndarray | None:
        """The query's vector, once encoded (hybrid retrieval searches with it). None: not
        a bi-encoder, or its encoding failed or was dropped."""
        self.start()
        if (fut := self._query_future) is None:  # not a bi-encoder
            return None
        try:
            res = await asyncio.shield(fut)  # the caller giving up must not cancel it
        except asyncio.CancelledError:
            if fut.cancelled():
                return None
            raise
        except Exception:  # the model failed: the request's scoring reports it
            return None
        return res.output

    async def submit(self, docs: Sequence[Doc]) -> None:
        if not docs:
            return
        eng = self._engine
        todo: list[Doc] = []
        keys: list[bytes] = []
        pairs = eng.pair_cache if self._use_cache and not self.bi else None
        for doc in docs:
            known = self._known(doc)
            key = pairs.key(self._query, doc.text) if pairs is not None else b""
            score = pairs.get(key) if pairs is not None else None
            if known is not None or score is not None:
                self._pending.append(_Pending(doc, [], known, score))
            else:
                todo.append(doc)
                keys.append(key)
        if todo or self._pending:
            self.start()  # queued first: within this request's deadline it runs first
        if not todo:
            return
        texts = [d.text for d in todo]
        windows = await eng.windows_async(texts, None if self.bi else self._query)
        seqs: list[Seq] = [(w, None) if self.bi else (self._query, w) for ws in windows for w in ws]
        if self._all_or_nothing:
            self._refuse_if_late(seqs)
        sinks: list[Sink | None] | None = None
        if pairs is not None:  # scores too outlive the request
            sinks = [
                s for k, ws in zip(keys, windows, strict=True) for s in pair_sinks(pairs, k, ws)
            ]
        elif self._use_cache:
            # Document vectors outlive the request: whatever finishes, even after the
            # request answered, fills the cache.
            assert eng.cache is not None
            sinks = [
                s
                for d, ws in zip(todo, windows, strict=True)
                for s in embedding_sinks(eng.cache, d.cache_id, d.text, ws)
            ]
        futures = eng.batcher.submit(seqs, self.due, group=self, sinks=sinks, trace=self._trace)
        at = 0
        for doc, ws in zip(todo, windows, strict=True):
            self._pending.append(_Pending(doc, futures[at : at + len(ws)]))
            at += len(ws)

    def _refuse_if_late(self, seqs: list[Seq]) -> None:
        batcher, now = self._engine.batcher, time.monotonic()
        due = self.due.at(now)
        if math.isinf(due):
            return
        need = batcher.backlog_s(due) + batcher.cost_s(seqs)
        left = due - now
        if need > left:
            raise WouldOverrun(need, left)

    def _known(self, doc: Doc) -> np.ndarray | None:
        if not self.bi:
            return None
        eng = self._engine
        if doc.vector is not None and eng.passages == "first":
            return np.asarray(doc.vector, dtype=np.float32).reshape(1, -1)
        if self._use_cache:
            assert eng.cache is not None
            return eng.cache.get(doc.cache_id, doc.text)
        return None

    def _futures(self) -> list[Future]:
        futs = [f for p in self._pending for f in p.futures]
        if self._query_future is not None:
            futs.append(self._query_future)
        return futs

    async def wait(self) -> None:
        """Until everything submitted is done, or the deadline."""
        futs = [f for f in self._futures() if not f.done()]
        if not futs:
            return
        now = time.monotonic()
        due = self.due.at(now)
        await asyncio.wait(futs, timeout=None if math.isinf(due) else max(0.0, due - now))

    def collect(self) -> Collected:
        got = Collected()
        qvec: np.ndarray | None = None
        if self._query_future is not None and self._ok(self._query_future, got):
            res = self._query_future.result()
            qvec = res.output
            got.times.add_item(res)
        known = [(p.doc, p.vectors) for p in self._pending if p.vectors is not None]
        got.index_vectors = sum(1 for doc, _ in known if doc.vector is not None)
        got.cache_hits = len(known) - got.index_vectors
        if qvec is not None and known:
            best = _best_rows([vecs for _, vecs in known], qvec)
            got.scores.update(zip((doc.id for doc, _ in known), best, strict=True))
        pair_hits = 0
        for p in self._pending:
            if p.score is not None:
                got.scores[p.doc.id] = p.score
                pair_hits += 1
            if p.known:
                continue
            if not all(self._ok(f, got) for f in p.futures):
                continue
            results = [f.result() for f in p.futures]
            for r in results:
                got.times.add_item(r)
            if self.bi:
                if qvec is not None:
                    vecs = np.stack([r.output for r in results])
                    got.scores[p.doc.id] = float((vecs @ qvec).max())
            else:
                got.scores[p.doc.id] = float(max(float(r.output) for r in results))
        if self._use_cache and self.bi:
            self._engine.observer.cache(hits=got.cache_hits, misses=self._misses())
        elif self._use_cache:
            self._engine.observer.pair_cache(hits=pair_hits, misses=self._misses())
        return got

    def _misses(self) -> int:
        return sum(1 for p in self._pending if not p.known)

    @staticmethod
    def _ok(f: Future, got: Collected) -> bool:
        if not f.done() or f.cancelled():
            return False
        exc = f.exception()
        if exc is not None:
            got.failure = got.failure or exc
            return False
        return True

    def release(self, abandoned: bool = False) -> None:
        """The request is answering: it stops waiting for its queued work (document
        embeddings still fill the cache, in the batcher's backfill). ``abandoned``: nobody
        will read the answer (the client hung up), so its queued work is dropped too."""
        if abandoned:
            self._engine.batcher.drop(self)
        for f in self._futures():
            f.cancel()

    def relevance(self, score: float) -> float:
        """The model's score mapped, monotonically, onto the [0, 1] that rerank-API clients
        expect: sigmoid of a cross-encoder logit, (1 + cosine) / 2 for a bi-encoder."""
        if self._engine.kind is ModelKind.CROSS_ENCODER:
            return 0.5 * (1.0 + math.tanh(0.5 * score))  # sigmoid without overflow
        return min(1.0, max(0.0, 0.5 * (1.0 + score)))  # rounding can take |cos| past 1

    @property
    def lowest(self) -> float:
        """The lowest raw score this model can give, for documents left unscored: -1 for a
        cosine; for an unbounded logit the lowest float32 (what an f32 score can carry)."""
        return LOWEST_LOGIT if self._engine.kind is ModelKind.CROSS_ENCODER else -1.0


def _best_rows(mats: list[np.ndarray], qvec: np.ndarray) -> list[float]:
    """Each document's best window (row of its matrix) against the query, in one product
    for them all (a product per document cost more in numpy's call overhead than in
    arithmetic)."""
    sims = np.concatenate(mats) @ qvec
    starts = np.cumsum([0] + [len(m) for m in mats[:-1]])
    best: list[float] = np.maximum.reduceat(sims, starts).tolist()
    return best


__all__ = ["Collected", "EngineView", "QueryScorer"]
