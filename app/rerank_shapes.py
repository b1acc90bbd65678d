"""The rerank APIs clients already speak, as small adapters around one handler
(``app/routes.py`` ``rerank_handler``) and one orchestration (``app/search.py``
``run_rerank``). An adapter says how its request reads and how its answer is written;
everything else (limits, the scoring policy, the deadline, the errors) is shared.

- ``POST /v1/rerank``: Cohere v1 and Jina (cohere ``Client``).
- ``POST /v2/rerank``: Cohere v2 (cohere ``ClientV2``, langchain-cohere, llama-index
  ``CohereRerank``, litellm ``cohere/``, Elasticsearch's ``custom`` service).
- ``POST /rerank``: text-embeddings-inference (litellm ``huggingface/``, llama-index's TEI
  postprocessor, Elasticsearch's ``hugging_face`` service). Its answer is a bare array, so
  whether the caller's budget cut scoring travels in headers, and its errors have TEI's
  ``{"error": "...", "error_type": "..."}`` body.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel

from app import rerank_schemas, schemas
from app.errors import ApiError
from app.http import Handler, json_depth, model_response
from app.paths import RERANK_TEI, RERANK_V1, RERANK_V2
from app.search import RerankParams, RerankResult

Req = TypeVar("Req", bound=BaseModel)
BUDGET_HEADER = "X-Rerank-Budget-Ms"  # the caller's deadline, for clients that add no field
PARTIAL_HEADER = "X-Rerank-Partial"
SCORED_HEADER = "X-Rerank-Scored"


@dataclass(frozen=True)
class Answering:
    """What an answer names besides the ranking."""

    request_id: str
    model: str  # the model that scored


class RerankShape(ABC, Generic[Req]):
    path: str
    summary: str
    request: type[Req]
    response: type[BaseModel]
    error: type[BaseModel] = schemas.ErrorResponse
    documents_field = "documents"  # named in limit errors

    @abstractmethod
    def params(self, req: Req) -> RerankParams:
        """The request as the orchestration takes it (the caller's ``budget_ms`` included)."""

    @abstractmethod
    def respond(self, req: Req, res: RerankResult, ans: Answering) -> web.Response: ...

    def error_body(self, status: int, code: str, message: str) -> bytes | None:
        """This API's own error body, or None for the service's one shape."""
        return None


def _document(d: str | rerank_schemas.RerankDocument) -> rerank_schemas.RerankDocument:
    return (
        d if isinstance(d, rerank_schemas.RerankDocument) else rerank_schemas.RerankDocument(text=d)
    )


# Documents are echoed (return_documents) by pydantic-core, whose serializer stops at ~255
# levels: deeper is refused up front, as a 422 naming the document, before any scoring.
MAX_ECHO_DEPTH = 64


def _echoable(documents: list[str | rerank_schemas.RerankDocument]) -> None:
    for i, d in enumerate(documents):
        if isinstance(d, rerank_schemas.RerankDocument) and d.model_extra:
            depth = 1 + json_depth(d.model_extra)
            if depth > MAX_ECHO_DEPTH:
                raise ApiError(
                    422,
                    "limit_exceeded",
                    f"documents[{i}]: nested {depth} deep, past the limit of {MAX_ECHO_DEPTH} "
                    "for return_documents",
                    f"documents[{i}]",
                )


def _cohere_params(req: rerank_schemas.CohereRerankRequest) -> RerankParams:
    docs = [_document(d) for d in req.documents]
    return RerankParams(
        query=req.query,
        documents=[(d.title or "", d.text) for d in docs],
        top_n=req.top_n,
        budget_ms=req.budget_ms,
    )


def _meta(res: RerankResult) -> rerank_schemas.RerankMeta:
    m = res.meta
    return rerank_schemas.RerankMeta(
        partial=m.partial, scored=m.scored, truncated=res.truncated, timings=m.timings_ms()
    )


class CohereV1(RerankShape[rerank_schemas.RerankRequest]):
    path = RERANK_V1.path
    summary = "Rerank given documents (Cohere v1 / Jina shape)"
    request = rerank_schemas.RerankRequest
    response = rerank_schemas.RerankResponse

    def params(self, req: rerank_schemas.RerankRequest) -> RerankParams:
        if req.return_documents:
            _echoable(req.documents)
        return _cohere_params(req)

    def respond(
        self, req: rerank_schemas.RerankRequest, res: RerankResult, ans: Answering
    ) -> web.Response:
        docs = [_document(d) for d in req.documents] if req.return_documents else None
        results = [
            rerank_schemas.RerankResult(
                index=r.index,
                relevance_score=r.relevance,
                document=docs[r.index].model_dump(exclude_none=True),
            )
            if docs is not None
            else rerank_schemas.RerankResult(index=r.index, relevance_score=r.relevance)
            for r in res.ranked
        ]
        return model_response(
            rerank_schemas.RerankResponse(
                id=ans.request_id,
                model=ans.model,
                results=results,
                usage=rerank_schemas.RerankUsage(total_tokens=res.tokens),
                meta=_meta(res),
            )
        )


class CohereV2(RerankShape[rerank_schemas.RerankRequestV2]):
    path = RERANK_V2.path
    summary = "Rerank given documents (Cohere v2 shape)"
    request = rerank_schemas.RerankRequestV2
    response = rerank_schemas.RerankResponseV2

    def params(self, req: rerank_schemas.RerankRequestV2) -> RerankParams:
        return _cohere_params(req)

    def respond(
        self, req: rerank_schemas.RerankRequestV2, res: RerankResult, ans: Answering
    ) -> web.Response:
        return model_response(
            rerank_schemas.RerankResponseV2(
                id=ans.request_id,
                model=ans.model,
                results=[
                    rerank_schemas.RerankResultV2(index=r.index, relevance_score=r.relevance)
                    for r in res.ranked
                ],
                usage=rerank_schemas.RerankUsage(total_tokens=res.tokens),
                meta=_meta(res),
            )
        )


# text-embeddings-inference's error types, by our status and code.
_TEI_TYPES: dict[int, str] = {401: "unauthorized", 429: "overloaded", 503: "unhealthy"}
_TEI_OVERLOAD_CODES = frozenset({"overloaded", "over_time_limit"})


class Tei(RerankShape[rerank_schemas.TeiRerankRequest]):
    path = RERANK_TEI.path
    summary = (
        "Rerank given texts (text-embeddings-inference shape): a bare array, best first; "
        f"`{SCORED_HEADER}` and `{PARTIAL_HEADER}` say whether a budget cut scoring"
    )
    request = rerank_schemas.TeiRerankRequest
    response = rerank_schemas.TeiRerankResponse
    error = rerank_schemas.TeiError
    documents_field = "texts"

    def params(self, req: rerank_schemas.TeiRerankRequest) -> RerankParams:
        return RerankParams(
            query=req.query,
            documents=[("", t) for t in req.texts],
            top_n=req.top_n,
            budget_ms=req.budget_ms,
        )

    def respond(
        self, req: rerank_schemas.TeiRerankRequest, res: RerankResult, ans: Answering
    ) -> web.Response:
        raw = bool(req.raw_scores)
        ranks = [
            rerank_schemas.TeiRank(
                index=r.index, text=req.texts[r.index], score=r.score if raw else r.relevance
            )
            if req.return_text
            else rerank_schemas.TeiRank(index=r.index, score=r.score if raw else r.relevance)
            for r in res.ranked
        ]
        resp = model_response(rerank_schemas.TeiRerankResponse(ranks))
        resp.headers[SCORED_HEADER] = str(res.meta.scored)
        resp.headers[PARTIAL_HEADER] = "true" if res.meta.partial else "false"
        return resp

    def error_body(self, status: int, code: str, message: str) -> bytes | None:
        if status == 503 and code in _TEI_OVERLOAD_CODES:
            kind = "overloaded"
        else:
            kind = _TEI_TYPES.get(status, "validation" if status < 500 else "backend")
        return orjson.dumps({"error": message, "error_type": kind})


SHAPES: tuple[RerankShape[Any], ...] = (CohereV1(), CohereV2(), Tei())


def error_shapes_middleware(shapes: tuple[RerankShape[Any], ...] = SHAPES) -> Middleware:
    """Rewrites the service's error body into the route's own where its API has one (only
    ``/rerank``): every error there, from auth, admission, parsing or scoring, alike."""
    by_path = {s.path: s for s in shapes if type(s).error_body is not RerankShape.error_body}

    @web.middleware
    async def reshape(request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        shape = by_path.get(request.path)
        if shape is None or resp.status < 400 or not isinstance(resp, web.Response):
            return resp
        try:
            err = orjson.loads(resp.body)["error"]  # type: ignore[arg-type]
            body = shape.error_body(resp.status, err["code"], err["message"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return resp
        if body is not None:
            resp.body = body
        return resp

    return reshape
