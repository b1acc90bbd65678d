"""HTTP handlers: parse and validate, call the orchestration (``app/search.py``), serialise.

Responses are built as the pydantic models that ``/openapi.json`` publishes, so the type
checker holds the code to the contract and pydantic-core writes the JSON. That costs about
20 µs per search answer and 1.2 µs per reranked document (1.2 ms at the 1000-document
limit, where scoring takes far longer): worth not having a second, hand-built shape.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from app import metrics, paths, schemas, shutdown
from app.config import LimitsConfig
from app.errors import ApiError, from_validation
from app.http import META, OPENAPI, SERVICES, Handler, json_depth, model_response
from app.logs import REQUEST_ID
from app.rerank_shapes import BUDGET_HEADER, SHAPES, Answering, RerankShape
from app.search import SearchParams, run_rerank, run_search
from retrieval.types import SubQuery

if TYPE_CHECKING:
    from app.services import Services

M = TypeVar("M", bound=BaseModel)


async def parse(request: web.Request, model: type[M]) -> M:
    # Already read by the body middleware (app/body.py: the one place a body too large,
    # unreadable or too slow is answered); this returns its cached bytes.
    body = await request.read()
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


def _to_subquery(sq: schemas.SubQueryIn, i: int, limits: LimitsConfig) -> SubQuery:
    """Converts one sub-query, holding it to the limits (a DSL query by its JSON size)."""
    field = f"subqueries[{i}]"
    if isinstance(sq, str):
        _limit(len(sq), limits.max_query_chars, field)
        return SubQuery.match(sq)
    if isinstance(sq, schemas.IdsSubQuery):
        return SubQuery.by_ids(sq.ids)
    if isinstance(sq, schemas.DslSubQuery):
        depth = json_depth(sq.query)
        if depth > limits.max_query_depth:
            raise ApiError(
                422,
                "limit_exceeded",
                f"{field}.query: nested {depth} deep, past the limit of {limits.max_query_depth}",
                f"{field}.query",
            )
        dsl = SubQuery.dsl(sq.query)
        _limit(len(dsl.text), limits.max_query_chars, f"{field}.query")
        return dsl
    _limit(len(sq.text), limits.max_query_chars, field)
    return SubQuery.match(sq.text, sq.field)


async def search(request: web.Request) -> web.Response:
    t0 = time.monotonic()
    svc = request.app[SERVICES]
    cfg = svc.config
    req = await parse(request, schemas.SearchRequest)
    _limit(len(req.query), cfg.limits.max_query_chars, "query")
    _limit(len(req.subqueries), cfg.limits.max_subqueries, "subqueries")
    subqueries = [_to_subquery(s, i, cfg.limits) for i, s in enumerate(req.subqueries)]
    # Asked per request of a service started without --hybrid, the kNN part runs as well:
    # an index without vectors loses it, and the answer says so (``lost``, ``knn``).
    hybrid = cfg.retrieval.hybrid if req.hybrid is None else req.hybrid
    if not req.match_query and not subqueries and not hybrid:
        raise ApiError(
            422,
            "invalid_field",
            "subqueries: required when match_query is false and hybrid is off (nothing to "
            "retrieve with)",
            "subqueries",
        )
    size = req.size or cfg.request.size
    params = SearchParams(
        query=req.query,
        subqueries=subqueries,
        match_query=req.match_query,
        candidates=req.candidates,
        retrieve=req.retrieve,
        size=size,
        budget_ms=req.budget_ms if req.budget_ms is not None else cfg.request.budget_ms,
        retrieval_ms=cfg.retrieval.retrieval_timeout_ms,
        deadline_ms=_deadline_ms(request, req.deadline_ms),
        fusion=req.fusion,
        fusion_weight=req.fusion_weight,
        hybrid=hybrid,
    )
    candidates, retrieve = params.sized(cfg)
    _limit(candidates, cfg.limits.max_candidates, "candidates")
    _limit(retrieve, max(cfg.limits.max_candidates, cfg.retrieval.retrieve), "retrieve")
    res = await run_search(svc, params, t0)
    request[META] = meta = res.meta
    rep, scoring = res.report, res.scoring
    first = 1 if req.match_query else 0  # position of subqueries[0] in the retrieval run
    return model_response(
        schemas.SearchResponse(
            hits=[
                schemas.SearchHit(
                    id=r.candidate.doc_id,
                    title=r.candidate.title,
                    score=r.score,
                    retrieval_score=r.candidate.score,
                    similarity=r.candidate.similarity,
                    model_score=r.model_score,
                )
                for r in res.ranked[:size]
            ],
            partial=meta.partial,
            budget_exhausted=meta.budget_exhausted,
            scored=meta.scored,
            candidates=meta.candidates,
            vectors=schemas.VectorSources(index=scoring.index_vectors, cache=scoring.cache_hits),
            lost=[
                schemas.LostPartOut(
                    chunk=p.chunk,
                    subqueries=[o - first for o in p.origins],
                    knn=p.knn,
                    error=p.error,
                )
                for p in rep.lost
            ],
            subqueries=[
                schemas.SubQueryResult(index=i, ids=ids)
                for i, ids in enumerate(rep.per_origin[first:])
            ],
            knn=rep.knn_ids,
            backend=svc.backend.name,
            timings=meta.timings_ms(),
        )
    )


def _header_ms(request: web.Request, name: str) -> float | None:
    """A number of ms from a header (``X-Rerank-Budget-Ms``, ``X-Request-Deadline-Ms``):
    any client can send a header, where not every one can add a field to the body."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= schemas.MAX_MS:  # NaN fails too
        raise ApiError(
            422,
            "invalid_field",
            f"{name}: must be a number of ms in (0, {schemas.MAX_MS}], not {raw!r}",
            name,
        )
    return value


def _deadline_ms(request: web.Request, body: float | None) -> float | None:
    """The caller's end-to-end deadline: the sooner of the body's and the header's."""
    given = [d for d in (body, _header_ms(request, schemas.DEADLINE_HEADER)) if d is not None]
    return min(given) if given else None


def rerank_handler(shape: RerankShape[Any]) -> Handler:
    """One handler for every rerank API: the shape parses and writes, the rest is shared."""

    async def rerank(request: web.Request) -> web.Response:
        t0 = time.monotonic()
        svc = request.app[SERVICES]
        cfg = svc.config
        req = await parse(request, shape.request)
        params = shape.params(req)
        _limit(len(params.query), cfg.limits.max_query_chars, "query")
        _limit(len(params.documents), cfg.limits.max_documents, shape.documents_field)
        header = _header_ms(request, BUDGET_HEADER)  # checked even when the body's wins
        budget = params.budget_ms if params.budget_ms is not None else header
        params = dataclasses.replace(params, budget_ms=budget, max_ms=cfg.request.rerank_max_ms)
        res = await run_rerank(svc, params, t0)
        request[META] = res.meta
        # The tracing middleware set the id (the caller's X-Request-ID or a fresh one).
        rid = REQUEST_ID.get() or uuid.uuid4().hex
        return shape.respond(req, res, Answering(rid, svc.engine.model_dir.name))

    return rerank


async def healthz(request: web.Request) -> web.Response:
    return model_response(schemas.Health(status="ok", checks={}))


async def readyz(request: web.Request) -> web.Response:
    drain = request.app.get(shutdown.DRAINING)
    if drain is not None and drain.active:  # SIGTERM received: take me out of rotation
        return model_response(schemas.Health(status="draining", checks={"draining": True}), 503)
    svc = request.app.get(SERVICES)
    # The model counts as up once it has run the shapes it serves (ScoringEngine.warm_up).
    checks = {
        "model": svc is not None and svc.engine.ready,
        "retrieval": svc is not None and await svc.backend.ping(),
    }
    # An empty (or missing) index answers every search with nothing: not ready either.
    has_docs = svc is not None and checks["retrieval"] and await svc.backend.num_docs() != 0
    checks["documents"] = has_docs
    ok = all(checks.values())
    reasons = {} if ok else _unready_reasons(svc, checks)
    health = schemas.Health(status="ok" if ok else "unready", checks=checks, reasons=reasons)
    return model_response(health, 200 if ok else 503)


def _unready_reasons(svc: Services | None, checks: dict[str, bool]) -> dict[str, str]:
    """Each failed check's cause: the backend's own words (``problem``) when it has them."""
    if svc is None:
        return {name: "the service is starting" for name, up in checks.items() if not up}
    problem = getattr(svc.backend, "problem", None)
    said = {
        "model": "the model is warming up",
        "retrieval": problem or f"the {svc.backend.name} backend is not reachable",
        "documents": problem or "the index has no documents (or cannot be counted)",
    }
    if not checks["retrieval"]:
        said["documents"] = "not checked: retrieval is down"
    return {name: said[name] for name, up in checks.items() if not up}


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Every route of the table (``app/paths.py``), each with its handler."""
    handlers: dict[str, Handler] = {
        paths.SEARCH.path: search,
        paths.HEALTHZ.path: healthz,
        paths.READYZ.path: readyz,
        paths.OPENAPI.path: openapi,
        paths.METRICS.path: metrics.handle,
    }
    handlers |= {shape.path: rerank_handler(shape) for shape in SHAPES}
    for route in paths.ROUTES:
        app.router.add_route(route.method, route.path, handlers[route.path])
