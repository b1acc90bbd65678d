"""Dedup, chunking and the streamed union, on the embedded backend."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rerank.due import Due
from rerank.engine import ScoringEngine
from rerank.scorer import QueryScorer
from retrieval.chunking import split
from retrieval.dedup import dedup
from retrieval.embedded.search import EmbeddedBackend
from retrieval.errors import BackendUnavailable, RetrievalError
from retrieval.fanout import RetrievalRun
from retrieval.types import Hit, SubQuery


def test_dedup_keeps_every_origin() -> None:
    qs = [
        SubQuery.match("Wing  Lift"),
        SubQuery.match("heat"),
        SubQuery.match("wing lift"),
        SubQuery.by_ids(["b", "a"]),
        SubQuery.by_ids(["a", "b", "a"]),
        SubQuery.match("heat", "title"),
    ]
    d = dedup(qs)
    assert len(d.unique) == 4
    assert d.origins == [[0, 2], [1], [3, 4], [5]]
    back = d.fan_back([["x"], ["y"], ["z"], ["w"]])
    assert back == [["x"], ["y"], ["x"], ["z"], ["z"], ["w"]]


async def test_each_query_is_fetched_as_deep_as_its_origins_ask(
    small_backend: EmbeddedBackend,
) -> None:
    many = "wing flat flow pasta team"  # each word hits other documents
    qs = [SubQuery.match(many), SubQuery.match("heat flat panel"), SubQuery.match(many.upper())]
    run = RetrievalRun(small_backend, qs, k=[1, 2, 3], n_chunks=2)
    async for _ in run.stream():
        pass
    assert [len(ids) for ids in run.report.per_origin] == [3, 2, 3]
    with pytest.raises(ValueError, match="2 depths for 3 queries"):
        RetrievalRun(small_backend, qs, k=[1, 2], n_chunks=1)


@pytest.mark.parametrize(
    ("n", "chunks", "sizes"), [(10, 3, [4, 3, 3]), (2, 4, [1, 1]), (0, 4, []), (7, 1, [7])]
)
def test_split_is_balanced_and_complete(n: int, chunks: int, sizes: list[int]) -> None:
    parts = split(list(range(n)), chunks)
    assert [len(p) for p in parts] == sizes
    assert [x for p in parts for x in p] == list(range(n))


async def test_union_keeps_best_score_and_streams_new_only(small_backend: EmbeddedBackend) -> None:
    qs = [
        SubQuery.match("wing lift slipstream"),
        SubQuery.match("flutter supersonic panels"),
        SubQuery.match("wing lift slipstream"),
        SubQuery.by_ids(["pasta", "wing"]),
    ]
    run = RetrievalRun(small_backend, qs, k=3, n_chunks=3)
    seen: list[str] = []
    async for chunk in run.stream():
        ids = [h.doc_id for h in chunk.new]
        assert not set(ids) & set(seen), "a candidate was streamed twice"
        seen += ids
    cands = run.candidates()
    assert sorted(seen) == sorted(h.doc_id for h in cands)
    assert len({h.doc_id for h in cands}) == len(cands)
    assert run.report.unique_queries == 3 and run.report.chunks == 3
    assert run.report.per_origin[0] == run.report.per_origin[2]
    assert run.report.per_origin[0][0] == "wing"
    assert set(run.report.per_origin[3]) == {"pasta", "wing"}
    assert [h.score for h in cands] == sorted((h.score for h in cands), reverse=True)
    # "wing" is hit by several queries with different BM25 scores: the union keeps the best.
    direct = await small_backend.search_chunk(qs, 3)
    wing_scores = [
        h.score for hits in direct if isinstance(hits, list) for h in hits if h.doc_id == "wing"
    ]
    assert len(set(wing_scores)) > 1
    assert next(h.score for h in cands if h.doc_id == "wing") == max(wing_scores)


class FailingBackend:
    name = "failing"

    def __init__(self, inner: EmbeddedBackend, bad: str) -> None:
        self.inner, self.bad = inner, bad

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        if any(q.text == self.bad for q in queries):
            raise BackendUnavailable("injected")
        return await self.inner.search_chunk(queries, k)

    async def ping(self) -> bool:
        return True

    async def num_docs(self) -> int | None:
        return None

    async def close(self) -> None:
        return None


async def test_failed_chunk_is_reported_and_others_used(small_backend: EmbeddedBackend) -> None:
    qs = [SubQuery.match("wing lift"), SubQuery.match("boom"), SubQuery.match("heat transfer")]
    run = RetrievalRun(FailingBackend(small_backend, "boom"), qs, k=2, n_chunks=3)
    _ = [c async for c in run.stream()]
    assert [p.origins for p in run.report.lost] == [(1,)]
    assert {"wing", "heat"} <= {h.doc_id for h in run.candidates()}


async def test_all_chunks_failing_raises(small_backend: EmbeddedBackend) -> None:
    run = RetrievalRun(
        FailingBackend(small_backend, "boom"), [SubQuery.match("boom")], k=2, n_chunks=2
    )
    with pytest.raises(BackendUnavailable):
        _ = [c async for c in run.stream()]


async def test_search_scores_up_to_candidates_across_overlapping_chunks(
    small_backend: EmbeddedBackend,
) -> None:
    """Duplicates across chunks free slots that later chunks (or leftovers) fill."""
    from rerank.pipeline import score_stream
    from rerank.scorer import Collected
    from rerank.types import Doc

    class CountingScorer:
        due = Due.at_instant(None)

        def __init__(self) -> None:
            self.docs: list[Doc] = []

        def start(self) -> None:
            pass

        async def submit(self, docs: list[Doc]) -> None:
            self.docs += docs

        async def wait(self) -> None:
            pass

        def collect(self) -> Collected:
            return Collected(scores={d.id: float(i) for i, d in enumerate(self.docs)})

        def release(self) -> None:
            pass

    qs = [
        SubQuery.match("wing boundary plate"),
        SubQuery.match("wing flow heat"),
        SubQuery.match("wing tomato team football"),
    ]
    run = RetrievalRun(small_backend, qs, k=6, n_chunks=3)
    scorer = CountingScorer()
    out = await score_stream(
        scorer,  # type: ignore[arg-type]
        run.stream(),
        candidates=5,
        doc_of=lambda c: Doc(c.doc_id, c.text),
    )
    assert len(out.model_scores) == len(out.considered) == 5 == len(scorer.docs)
    assert len({d.text for d in scorer.docs}) == 5


async def test_deadline_ranks_scored_first_and_rest_in_retrieval_order(
    small_backend: EmbeddedBackend,
) -> None:
    """Only the first two candidates get scored before the deadline: the outcome keeps their
    scores, flags the cut, and the ranking puts the rest after them in retrieval order."""
    import time

    from rerank.pipeline import score_stream
    from rerank.ranking import rank
    from rerank.scorer import Collected
    from rerank.types import Doc

    calls: list[list[str]] = []

    class HalfScorer:
        due = Due.at_instant(time.monotonic() + 5.0)

        def start(self) -> None:
            pass

        async def submit(self, docs: list[Doc]) -> None:
            calls.append([d.id for d in docs])

        async def wait(self) -> None:
            pass

        def collect(self) -> Collected:
            first = calls[0][:2]
            return Collected(scores={d: float(i) for i, d in enumerate(first)})

        def release(self) -> None:
            pass

    run = RetrievalRun(
        small_backend, [SubQuery.match("wing flow heat plate tomato")], k=6, n_chunks=1
    )
    t0 = time.monotonic()
    out = await score_stream(
        HalfScorer(),  # type: ignore[arg-type]
        run.stream(),
        candidates=5,
        doc_of=lambda c: Doc(c.doc_id, c.text),
    )
    assert time.monotonic() - t0 < 1.0
    assert out.budget_exhausted and not out.retrieval_timed_out
    assert set(out.model_scores) == set(calls[0][:2]) and len(calls[0]) == 5
    assert out.considered == calls[0]
    ranked = rank(run.candidates(), out.model_scores, "model")
    assert [r.candidate.doc_id for r in ranked[:2]] == calls[0][:2][::-1]  # by model score
    rest = ranked[2:]
    assert all(r.model_score is None for r in rest)
    assert [r.candidate.score for r in rest] == sorted(
        (r.candidate.score for r in rest), reverse=True
    )


def test_chunk_planner_balances_scoring_against_round_trips() -> None:
    from retrieval.planner import ChunkPlanner

    p = ChunkPlanner(initial=4, max_chunks=8, alpha=1.0)
    assert p.chunks(10) == 4  # nothing measured yet
    p.observe([0.004, 0.005, 0.006], scoring_seconds=0.020)  # scoring ~4 round trips
    assert p.chunks(10) == 4
    p.observe([0.005], scoring_seconds=0.002)  # index-time vectors: scoring is cheap
    assert p.chunks(10) == 1
    p.observe([0.001], scoring_seconds=0.5)  # a slow cross-encoder
    assert p.chunks(50) == 8 and p.chunks(3) == 3  # capped by max and by the queries
    assert ChunkPlanner(fixed=2).chunks(10) == 2


async def test_search_feeds_the_planner(
    engine: ScoringEngine, small_backend: EmbeddedBackend
) -> None:

    from app.config import Config
    from app.search import SearchParams, run_search
    from app.services import Services

    cfg = Config().override(chunks=0)
    svc = Services(cfg, engine, small_backend)
    assert svc.planner.es_s is None
    subs = [SubQuery.match("heat"), SubQuery.match("plate")]
    res = await run_search(svc, SearchParams("wing flow", subqueries=subs, budget_ms=None))
    assert res.report.chunks == 3 and len(res.report.chunk_seconds) == 3  # initial guess
    assert svc.planner.es_s is not None and svc.planner.scoring_s is not None


async def test_query_is_encoded_while_retrieval_runs(
    engine: ScoringEngine, small_backend: EmbeddedBackend
) -> None:
    """A bi-encoder's query vector does not depend on the hits: it is computed while the
    backend has not answered yet, not after (issue 14)."""
    from rerank.pipeline import score_stream
    from rerank.types import Doc

    answer = asyncio.Event()

    class Held:
        name = "held"

        async def search_chunk(
            self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
        ) -> list[list[Hit] | RetrievalError]:
            await answer.wait()
            return await small_backend.search_chunk(queries, k, deadline)

    scorer = QueryScorer(engine, "wing flutter")
    run = RetrievalRun(Held(), [SubQuery.match("wing flutter")], k=5, n_chunks=1)  # type: ignore[arg-type]
    task = asyncio.create_task(
        score_stream(scorer, run.stream(), candidates=5, doc_of=lambda c: Doc(c.doc_id, c.text))
    )
    await asyncio.sleep(0)  # score_stream runs up to its first wait on retrieval
    query = scorer._query_future  # the request's query item in the batcher
    assert query is not None
    await asyncio.wait_for(asyncio.shield(query), 30)  # done while retrieval is held
    assert not answer.is_set()
    answer.set()
    out = await task
    assert out.considered and len(out.model_scores) == len(out.considered)
