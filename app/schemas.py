"""Request and response shapes. The same models validate requests and generate
``/openapi.json``, so the published contract cannot drift from what the server enforces."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextSubQuery(Strict):
    """Text matched against the title and text fields (or only `field`)."""

    text: NonBlank
    field: Literal["title", "text"] | None = None


class IdsSubQuery(Strict):
    """Documents fetched by id."""

    ids: Annotated[list[NonBlank], Field(min_length=1, max_length=1000)]


class DslSubQuery(Strict):
    """An Elasticsearch query object, sent as the search body's `query` (Elasticsearch
    backend only; the embedded index answers 422)."""

    query: Annotated[
        dict[str, Any],
        Field(min_length=1, description='any Elasticsearch query object, e.g. {"bool": ...}'),
    ]


def _subquery_kind(value: Any) -> str:
    """Picks the one branch a sub-query can be, so an error names that branch's problem."""
    if isinstance(value, dict):
        if "ids" in value:
            return "IdsSubQuery"
        return "DslSubQuery" if "query" in value else "TextSubQuery"
    if isinstance(value, BaseModel):
        return type(value).__name__
    return "str"


# Exactly one of the kinds (``oneOf`` in /openapi.json): each object kind has its key
# required and no other keys, so a schema-valid body is a valid sub-query.
SubQueryIn = Annotated[
    Annotated[NonBlank, Tag("str")]
    | Annotated[TextSubQuery, Tag("TextSubQuery")]
    | Annotated[IdsSubQuery, Tag("IdsSubQuery")]
    | Annotated[DslSubQuery, Tag("DslSubQuery")],
    Discriminator(_subquery_kind),
]


class SearchRequest(Strict):
    query: NonBlank
    size: Annotated[int, Field(ge=1, le=1000)] | None = None
    candidates: Annotated[int, Field(ge=1, description="how many candidates to rerank")] | None = (
        None
    )
    retrieve: Annotated[int, Field(ge=1, description="hits retrieved per sub-query")] | None = None
    fusion: Literal["rrf", "linear", "model"] | None = None
    fusion_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    subqueries: list[SubQueryIn] = Field(default_factory=list)
    match_query: bool = Field(
        True,
        description="also retrieve with `query` itself; false: retrieve with `subqueries` "
        "only (then required), `query` is only what the model scores against",
    )
    budget_ms: Annotated[float, Field(gt=0, le=600_000)] | None = None


class SearchHit(BaseModel):
    id: str
    title: str
    score: float | None = Field(
        description="fused ranking score; null when this hit was not scored (beyond "
        "`candidates`, or the budget ran out)"
    )
    retrieval_score: float
    model_score: float | None


class LostPartOut(BaseModel):
    chunk: int
    subqueries: list[int] = Field(
        description="indexes into the request's `subqueries`; -1 is the main query"
    )
    error: str


class SubQueryResult(BaseModel):
    index: int
    ids: list[str]


class VectorSources(BaseModel):
    index: int = Field(description="stored in the index at index time")
    cache: int = Field(description="from the document-embedding cache")


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    partial: bool = Field(description="true when retrieval lost a part or the budget cut scoring")
    budget_exhausted: bool
    scored: int
    candidates: int
    vectors: VectorSources = Field(
        description="scored documents whose vector came without running the model"
    )
    lost: list[LostPartOut]
    subqueries: list[SubQueryResult]
    backend: str
    timings: dict[str, float] = Field(description="stage durations in ms")


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    text: str
    title: str | None = None


class RerankRequest(Strict):
    """Cohere/Jina rerank shape, so existing clients work unchanged."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
    model: str | None = None
    query: NonBlank
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)]
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = False
    # Accepted so Cohere clients work unchanged; documents are scored as title + text and
    # long ones truncated (or split, with --passages best) by the service's own settings.
    rank_fields: list[str] | None = None
    max_chunks_per_doc: Annotated[int, Field(ge=1)] | None = None
    max_tokens_per_doc: Annotated[int, Field(ge=1)] | None = None
    budget_ms: Annotated[float, Field(gt=0, le=600_000)] | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float | None
    document: dict[str, Any] | None = None


class RerankMeta(BaseModel):
    partial: bool
    scored: int
    truncated: list[int] = Field(
        default_factory=list,
        description="indexes of documents whose text was cut to the service's max_doc_chars "
        "before scoring",
    )
    timings: dict[str, float]


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    request_id: str | None = Field(None, description="also in X-Request-ID; finds the log lines")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "unready", "draining"]
    checks: dict[str, bool] = Field(default_factory=dict)
