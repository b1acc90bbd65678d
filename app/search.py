"""One search, end to end, without HTTP: the code path shared by ``/v1/search`` and ``eval``.

It wires retrieval's chunk stream into the scoring pipeline and the final ranking; the
ranking decisions themselves live in ``rerank``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.services import Services
from rerank.fusion import FusionMethod
from rerank.pipeline import ScoreOutcome, score_stream
from rerank.ranking import Ranked, rank
from rerank.text import doc_text, prepare_query
from rerank.types import Doc
from retrieval.fanout import RetrievalRun
from retrieval.types import Hit, RetrievalReport, SubQuery


@dataclass(frozen=True)
class SearchParams:
    query: str
    subqueries: list[SubQuery] = field(default_factory=list)
    candidates: int = 20
    retrieve: int = 100
    budget_ms: float | None = None  # None: no deadline
    fusion: FusionMethod = "linear"
    fusion_weight: float = 0.5


@dataclass
class SearchResult:
    union: list[Hit]  # every retrieved candidate, best retrieval score first
    ranked: list[Ranked[Hit]]
    report: RetrievalReport
    scoring: ScoreOutcome
    total_seconds: float

    @property
    def partial(self) -> bool:
        return bool(self.report.lost) or self.scoring.budget_exhausted


async def run_search(svc: Services, p: SearchParams, t0: float | None = None) -> SearchResult:
    """``t0`` (``time.monotonic()``) is when the request arrived: the budget counts from it."""
    t0 = time.monotonic() if t0 is None else t0
    cfg = svc.config
    queries = [SubQuery.match(p.query), *p.subqueries]
    deadline = None if p.budget_ms is None else t0 + p.budget_ms / 1000.0
    n_chunks = svc.planner.chunks(len(set(queries)))
    k = max(p.retrieve, p.candidates)
    run = RetrievalRun(svc.backend, queries, k=k, n_chunks=n_chunks, deadline=deadline)
    scorer = svc.engine.scorer(prepare_query(p.query, cfg.ranking.query_prep), deadline)
    scoring = await score_stream(
        scorer,
        run.stream(),
        candidates=p.candidates,
        doc_of=lambda c: Doc(
            c.doc_id,
            doc_text(c, cfg.ranking.doc_fields)[: cfg.limits.max_doc_chars],
            c.vector,
            c.doc_id,
        ),
    )
    svc.planner.observe(run.report.chunk_seconds, scoring.wall_s)
    union = run.candidates()
    ranked = rank(union, scoring.model_scores, p.fusion, p.fusion_weight, cfg.ranking.rrf_k)
    return SearchResult(union, ranked, run.report, scoring, time.monotonic() - t0)
