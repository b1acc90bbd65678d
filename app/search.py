"""The two scoring requests end to end, without HTTP: ``run_search`` (``/v1/search`` and
``eval``) and ``run_rerank`` (``/v1/rerank``, ``/v2/rerank``, ``/rerank``). Handlers
parse, call one of these, and serialise what it returns.

They wire retrieval's chunk stream into the scoring pipeline and the final ranking; the
ranking decisions themselves live in ``rerank``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from app.config import Config
from app.errors import OverTimeLimit
from app.meta import RequestMeta
from app.otel import CURRENT
from app.services import Services
from rerank.errors import WouldOverrun
from rerank.pipeline import ScoreOutcome, score_all, score_stream
from rerank.ranking import Ranked, rank
from rerank.scorer import QueryScorer
from rerank.text import doc_text, prepare_query
from rerank.types import Doc, FusionMethod
from retrieval.errors import RetrievalError
from retrieval.fanout import KnnAsk, RetrievalRun
from retrieval.types import Hit, RetrievalReport, SubQuery


@dataclass(frozen=True)
class SearchParams:
    """A search as the orchestration takes it. A setting left None is the served config's
    (its sections are the one place request defaults live)."""

    query: str
    subqueries: list[SubQuery] = field(default_factory=list)
    match_query: bool = True  # False: retrieve with the sub-queries only
    candidates: int | None = None  # None: ``request.candidates``
    retrieve: int | None = None  # hits each of ``subqueries`` reports (``per_origin``)
    size: int | None = None  # hits the caller reads from ``ranked``; None: ``candidates``
    budget_ms: float | None = None  # ranking budget, from when retrieval answered; None: none
    retrieval_ms: float | None = None  # retrieval's own bound, from arrival; None: none
    deadline_ms: float | None = None  # the caller's end-to-end deadline; None: none
    fusion: FusionMethod | None = None  # None: ``ranking.fusion``
    fusion_weight: float | None = None  # None: ``ranking.fusion_weight``
    hybrid: bool | None = None  # the query's vector retrieves too; None: ``retrieval.hybrid``

    def sized(self, cfg: Config) -> tuple[int, int]:
        """(candidates, retrieve): the caller's, or the config's (``retrieve`` at least
        ``candidates``)."""
        candidates = self.candidates or cfg.request.candidates
        return candidates, self.retrieve or max(cfg.retrieval.retrieve, candidates)


@dataclass
class SearchResult:
    union: list[Hit]  # every retrieved candidate, best retrieval score first
    ranked: list[Ranked[Hit]]
    report: RetrievalReport
    scoring: ScoreOutcome
    meta: RequestMeta


async def run_search(svc: Services, p: SearchParams, t0: float | None = None) -> SearchResult:
    """``t0`` (``time.monotonic()``) is when the request arrived: retrieval's bound and the
    caller's deadline count from it, the ranking budget from when retrieval answered."""
    cfg = svc.config
    meta = RequestMeta.search(p.budget_ms, p.retrieval_ms, p.deadline_ms, t0)
    labels = [f"subqueries[{i}]" for i in range(len(p.subqueries))]
    # Ranking reads each query's best ``depth`` hits at most: the union's top N by best
    # score are each in the top N of the query that scored them best. The main query is
    # fetched that deep and no deeper; a sub-query also reports its ``retrieve`` ids.
    candidates, retrieve = p.sized(cfg)
    depth = max(candidates, p.size or 0)
    queries, ks = list(p.subqueries), [max(retrieve, depth)] * len(p.subqueries)
    if p.match_query:
        queries, labels = [SubQuery.match(p.query), *queries], ["query", *labels]
        ks = [depth, *ks]
    n_chunks = svc.planner.chunks(len(set(queries)))
    trace = CURRENT.get()  # None: tracing off
    query = prepare_query(p.query, cfg.ranking.query_prep)
    scorer = QueryScorer(svc.engine, query, meta.due, trace=trace)
    # Hybrid: the query's encoding is queued now (``score_stream`` starts it first thing)
    # and the kNN part goes out the moment its vector exists, beside the lexical chunks.
    hybrid = cfg.retrieval.hybrid if p.hybrid is None else p.hybrid
    knn = KnnAsk(scorer.query_vector, cfg.retrieval.knn_k) if hybrid else None
    run = RetrievalRun(
        svc.backend,
        queries,
        ks,
        n_chunks,
        meta.retrieval_deadline,
        labels=labels,
        trace=trace,
        knn=knn,
    )
    scoring = await score_stream(
        scorer,
        run.stream(),
        candidates=candidates,
        doc_of=lambda c: Doc(
            c.doc_id,
            doc_text(c, cfg.ranking.doc_fields)[: cfg.limits.max_doc_chars],
            c.vector,
            c.doc_id,
        ),
        retrieval_deadline=meta.retrieval_deadline,
    )
    # The stream may have been closed at its deadline before any chunk answered: a
    # failed retrieval (503/504), never an empty 200.
    run.raise_if_unanswered()
    svc.planner.observe(run.report.chunk_seconds, scoring.wall_s)
    meta.record(scoring, run.report, svc.backend.name)
    union = run.candidates()
    fusion = p.fusion or cfg.ranking.fusion
    weight = cfg.ranking.fusion_weight if p.fusion_weight is None else p.fusion_weight
    ranked = rank(union, scoring.model_scores, fusion, weight, cfg.ranking.rrf_k)
    return SearchResult(union, ranked, run.report, scoring, meta)


@dataclass(frozen=True)
class RerankParams:
    query: str
    documents: list[tuple[str, str]]  # (title, text), in the caller's order
    top_n: int | None = None  # None: every document
    budget_ms: float | None = None  # the caller's deadline; None: score every document
    max_ms: float | None = None  # the server's limit; None: none


@dataclass(frozen=True)
class Given:
    """A document given in the request. No retrieval ran: its position in the request
    stands in for the retrieval order (what ranks it when the budget cut its scoring)."""

    index: int
    title: str
    text: str

    @property
    def doc_id(self) -> str:
        return str(self.index)

    @property
    def score(self) -> float:
        return float(-self.index)


@dataclass(frozen=True)
class Reranked:
    """One document's place in the answer. A document the caller's budget left unscored
    has the lowest score there is on each scale (``scored`` False), so that every client
    parser gets a number and the order stays true."""

    index: int  # in the request
    score: float  # the model's own: cosine (bi-encoder) or logit (cross-encoder)
    relevance: float  # the same, mapped onto [0, 1]
    scored: bool


@dataclass
class RerankResult:
    ranked: list[Reranked]  # best first, at most top_n
    truncated: list[int]  # indexes of documents cut to max_doc_chars
    tokens: int  # real (non-padding) tokens the model read
    meta: RequestMeta


async def run_rerank(svc: Services, p: RerankParams, t0: float | None = None) -> RerankResult:
    """The one orchestration behind every rerank route. ``t0`` as in :func:`run_search`.

    Without a budget from the caller every document is scored, or :class:`OverTimeLimit`
    is raised when that does not fit in ``max_ms``: a client that asked for no deadline
    must never get an answer with documents missing. A caller's budget (cut to
    ``max_ms``) allows a partial answer, and ``meta`` says so."""
    cfg = svc.config
    exact = p.budget_ms is None
    limits = [b for b in (p.budget_ms, p.max_ms) if b is not None]
    meta = RequestMeta.start(min(limits) if limits else None, t0)
    # Text past max_doc_chars is cut (the model sees only its first tokens anyway) and
    # flagged: a long document is not an error, but tokenising megabytes is.
    cap = cfg.limits.max_doc_chars
    given = [Given(i, title[:cap], text[:cap]) for i, (title, text) in enumerate(p.documents)]
    truncated = [
        i for i, (title, text) in enumerate(p.documents) if max(map(len, (title, text))) > cap
    ]
    query = prepare_query(p.query, cfg.ranking.query_prep)
    scorer = QueryScorer(svc.engine, query, meta.due, all_or_nothing=exact, trace=CURRENT.get())
    try:
        # No stable ids here: the cache keys these documents on their text alone.
        scoring = await score_all(
            scorer, given, doc_of=lambda g: Doc(g.doc_id, doc_text(g, cfg.ranking.doc_fields))
        )
    except WouldOverrun as exc:
        # Refused at once, not after waiting out the limit for the same 503.
        raise _over_limit(f"{exc}, over", p.max_ms) from exc
    meta.record(scoring)
    if exact and scoring.budget_exhausted:
        raise _over_limit(f"scored {meta.scored} of {len(given)} documents within", p.max_ms)
    ranked = [
        Reranked(r.candidate.index, r.model_score, scorer.relevance(r.model_score), True)
        if r.model_score is not None
        else Reranked(r.candidate.index, scorer.lowest, 0.0, False)
        for r in rank(given, scoring.model_scores, "model")[: p.top_n or len(given)]
    ]
    return RerankResult(ranked, truncated, scoring.times.real_tokens, meta)


def _over_limit(what: str, max_ms: float | None) -> OverTimeLimit:
    return OverTimeLimit(
        f"{what} the server's limit of {max_ms:g} ms; retry later, send fewer documents, or "
        "set a budget to accept a partial answer"
    )


WARM_QUERIES = ("open a file for reading", "sort a list in place", "wing pressure distribution")


async def warm_up(svc: Services) -> None:
    """Before the service says ready: the engine runs the shapes it will serve, then a few
    searches and reranks go through the whole path with no deadline, so retrieval's first
    searches (its thread, the index's files) and every lazy first use on the way are paid
    here, not by the first requests, which would answer unscored within their budget."""
    cfg = svc.config
    await svc.engine.warm_up(cfg.request.candidates)
    docs = [("", q) for q in WARM_QUERIES]
    for q in WARM_QUERIES:
        await run_rerank(svc, RerankParams(q, docs))
    try:
        for q in WARM_QUERIES:
            params = SearchParams(q, retrieval_ms=cfg.retrieval.retrieval_timeout_ms)
            await run_search(svc, params)
    except RetrievalError as exc:
        # A cluster down at start-up must not stop the service from starting: /readyz says
        # so, and retrieval warms up on its first requests once the cluster is back.
        logging.getLogger("app").warning("warm-up searches skipped: %s", exc)
