"""HTTP handlers: parse and validate, call retrieval and rerank, serialise."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypeVar

import orjson
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from app import schemas, tracing
from app.errors import ApiError, from_validation
from app.search import SearchParams, run_search
from app.services import Services
from rerank.pipeline import score_all
from rerank.ranking import rank
from rerank.text import doc_text, prepare_query
from rerank.types import Doc
from retrieval.types import Hit, SubQuery

SERVICES = web.AppKey("services", Services)
OPENAPI = web.AppKey("openapi", bytes)
TIMINGS = web.RequestKey("timings", dict)
M = TypeVar("M", bound=BaseModel)


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def parse(request: web.Request, model: type[M]) -> M:
    try:
        body = await request.read()  # raises 413 past client_max_size
    except (web.HTTPRequestEntityTooLarge, asyncio.CancelledError):
        raise
    except (ClientPayloadError, HttpProcessingError) as exc:
        raise ApiError(400, "malformed_body", f"body could not be read: {exc}") from exc
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_field", "body: must be a JSON object", None)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise from_validation(exc) from exc


def _limit(value: int, limit: int, field: str) -> None:
    if value > limit:
        raise ApiError(
            422, "limit_exceeded", f"{field}: {value} exceeds the limit of {limit}", field
        )


def _to_subquery(sq: str | schemas.SubQueryIn) -> SubQuery:
    if isinstance(sq, str):
        return SubQuery.match(sq)
    if sq.ids is not None:
        return SubQuery.by_ids(sq.ids)
    assert sq.text is not None
    return SubQuery.match(sq.text, sq.field)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


async def search(request: web.Request) -> web.Response:
    t0 = time.monotonic()
    svc = request.app[SERVICES]
    cfg = svc.config
    req = await parse(request, schemas.SearchRequest)
    _limit(len(req.query), cfg.limits.max_query_chars, "query")
    _limit(len(req.subqueries), cfg.limits.max_subqueries, "subqueries")
    for i, sq in enumerate(req.subqueries):
        text = sq if isinstance(sq, str) else (sq.text or "")
        _limit(len(text), cfg.limits.max_query_chars, f"subqueries[{i}]")
    candidates = req.candidates or cfg.request.candidates
    _limit(candidates, cfg.limits.max_candidates, "candidates")
    retrieve = req.retrieve or max(cfg.retrieval.retrieve, candidates)
    _limit(retrieve, max(cfg.limits.max_candidates, cfg.retrieval.retrieve), "retrieve")
    params = SearchParams(
        query=req.query,
        subqueries=[_to_subquery(s) for s in req.subqueries],
        candidates=candidates,
        retrieve=retrieve,
        budget_ms=req.budget_ms if req.budget_ms is not None else cfg.request.budget_ms,
        fusion=req.fusion or cfg.ranking.fusion,
        fusion_weight=req.fusion_weight
        if req.fusion_weight is not None
        else cfg.ranking.fusion_weight,
    )
    res = await run_search(svc, params, t0)
    rep, scoring = res.report, res.scoring
    timings = {
        "retrieve": _ms(rep.seconds),
        "tokenize": _ms(scoring.times.tokenize),
        "infer": _ms(scoring.times.infer),
        "total": _ms(time.monotonic() - t0),
    }
    request[TIMINGS] = timings
    tracing.record(request, scoring, rep, svc.backend.name)
    hits = [
        {
            "id": r.candidate.doc_id,
            "title": r.candidate.title,
            "score": r.score,
            "retrieval_score": r.candidate.score,
            "model_score": r.model_score,
        }
        for r in res.ranked[: req.size or cfg.request.size]
    ]
    return json_response(
        {
            "hits": hits,
            "partial": res.partial,
            "budget_exhausted": scoring.budget_exhausted,
            "scored": len(scoring.model_scores),
            "candidates": len(scoring.considered),
            "vectors": {"index": scoring.index_vectors, "cache": scoring.cache_hits},
            "lost": [
                {"chunk": p.chunk, "subqueries": [o - 1 for o in p.origins], "error": p.error}
                for p in rep.lost
            ],
            "subqueries": [{"index": i, "ids": ids} for i, ids in enumerate(rep.per_origin[1:])],
            "backend": svc.backend.name,
            "timings": timings,
        }
    )


async def rerank(request: web.Request) -> web.Response:
    t0 = time.monotonic()
    svc = request.app[SERVICES]
    cfg = svc.config
    req = await parse(request, schemas.RerankRequest)
    _limit(len(req.query), cfg.limits.max_query_chars, "query")
    _limit(len(req.documents), cfg.limits.max_documents, "documents")
    docs = [
        d if isinstance(d, schemas.RerankDocument) else schemas.RerankDocument(text=d)
        for d in req.documents
    ]
    # Input order stands in for the retrieval order when the budget cuts scoring short.
    # Text past max_doc_chars is cut (the model sees only its first tokens anyway) and
    # flagged: a long document is not an error, but tokenising megabytes is.
    cap = cfg.limits.max_doc_chars
    truncated = [i for i, d in enumerate(docs) if len(d.text) > cap or len(d.title or "") > cap]
    cands = [
        Hit(str(i), (d.title or "")[:cap], d.text[:cap], float(-i)) for i, d in enumerate(docs)
    ]
    budget_ms = req.budget_ms if req.budget_ms is not None else cfg.request.budget_ms
    query = prepare_query(req.query, cfg.ranking.query_prep)
    scorer = svc.engine.scorer(query, t0 + budget_ms / 1000.0)
    # No stable ids here: the cache keys these documents on their text alone.
    scoring = await score_all(
        scorer, cands, doc_of=lambda c: Doc(c.doc_id, doc_text(c, cfg.ranking.doc_fields))
    )
    timings = {
        "tokenize": _ms(scoring.times.tokenize),
        "infer": _ms(scoring.times.infer),
        "total": _ms(time.monotonic() - t0),
    }
    request[TIMINGS] = timings
    tracing.record(request, scoring)
    results = []
    for r in rank(cands, scoring.model_scores, "model")[: req.top_n or len(cands)]:
        idx = int(r.candidate.doc_id)
        rel = None if r.model_score is None else scorer.relevance(r.model_score)
        item: dict[str, Any] = {"index": idx, "relevance_score": rel}
        if req.return_documents:
            item["document"] = docs[idx].model_dump(exclude_none=True)
        results.append(item)
    return json_response(
        {
            "id": uuid.uuid4().hex,
            "model": req.model or svc.engine.model_dir.name,
            "results": results,
            "usage": {"total_tokens": scoring.times.real_tokens},
            "meta": {
                "partial": scoring.budget_exhausted,
                "scored": len(scoring.model_scores),
                "truncated": truncated,
                "timings": timings,
            },
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "checks": {}})


async def readyz(request: web.Request) -> web.Response:
    from app.shutdown import DRAINING

    drain = request.app.get(DRAINING)
    if drain is not None and drain.active:  # SIGTERM received: take me out of rotation
        return json_response({"status": "draining", "checks": {"draining": True}}, status=503)
    svc = request.app.get(SERVICES)
    checks = {"model": svc is not None, "retrieval": svc is not None and await svc.backend.ping()}
    ok = all(checks.values())
    return json_response(
        {"status": "ok" if ok else "unready", "checks": checks}, status=200 if ok else 503
    )


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/search", search)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
