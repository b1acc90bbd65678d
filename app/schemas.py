"""Request and response shapes. The same models validate requests and generate
``/openapi.json``, so the published contract cannot drift from what the server enforces."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StringConstraints,
    Tag,
)

# Published as ``pattern: "\\S"`` (a non-whitespace character somewhere): the value is
# stripped before ``min_length`` applies, so ``"\t"`` is refused and the schema says so.
NonBlank = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1),
    Field(json_schema_extra={"pattern": r"\S"}),
]


def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``1.0``: accept a float with no fraction as the
    int it is; refuse ``1.5`` and booleans by name (strict models refuse the rest)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be an integer, not {value!r}")
        return int(value)
    return value


# An integer field as the published schema says: JSON Schema's ``integer`` (1 and 1.0,
# never 1.5). Constraints go BEFORE it, ``Annotated[int, Field(ge=1), INTEGRAL]``: after it
# (``Annotated[Integral, Field(ge=1)]``) pydantic still checks them but publishes ``ge``
# instead of ``minimum`` (tests/unit/test_schemas.py checks the published schema).
INTEGRAL = BeforeValidator(_integral)
Integral = Annotated[int, INTEGRAL]


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
    """An Elasticsearch query object, sent as the search body's `query` (the embedded
    index answers a subset; anything outside it is a 422 naming the construct)."""

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
    # app/routes.py refuses match_query=false without sub-queries; the schema says so.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"match_query": {"const": False}}, "required": ["match_query"]},
            "then": {"properties": {"subqueries": {"minItems": 1}}, "required": ["subqueries"]},
        }
    )

    query: NonBlank
    size: Annotated[int, Field(ge=1, le=1000), INTEGRAL] | None = None
    candidates: (
        Annotated[int, Field(ge=1, description="how many candidates to rerank"), INTEGRAL] | None
    ) = None
    retrieve: (
        Annotated[int, Field(ge=1, description="hits retrieved per sub-query"), INTEGRAL] | None
    ) = None
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


MAX_BUDGET_MS = 600_000
Integer = Integral
Count = Annotated[int, Field(ge=1), INTEGRAL]
BudgetMs = Annotated[
    float,
    Field(
        gt=0,
        le=MAX_BUDGET_MS,
        description="a deadline in ms: documents not scored by then follow the scored ones "
        "with the lowest score, and the answer says so (also as the `X-Rerank-Budget-Ms` "
        "header). Without one every document is scored, within the server's `--rerank-max-ms`",
    ),
]


class Lenient(BaseModel):
    """The rerank APIs other clients speak: unknown fields are ignored (as Cohere and
    text-embeddings-inference do) and every optional field may be JSON null (the cohere SDK
    sends null for an argument passed as None)."""

    model_config = ConfigDict(extra="ignore", strict=True, protected_namespaces=())


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    text: str
    title: str | None = None


class CohereRerankRequest(Lenient):
    """What the Cohere rerank APIs (v1, v2) and Jina share."""

    model: str | None = Field(None, description="accepted and ignored: the served model scores")
    query: NonBlank
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)]
    top_n: Count | None = Field(None, description="return the best n (all when more)")
    # Accepted so clients work unchanged; documents are scored as title + text and long ones
    # truncated (or split, with --passages best) by the service's own settings.
    max_tokens_per_doc: Count | None = None
    budget_ms: BudgetMs | None = None


class RerankRequest(CohereRerankRequest):
    """``POST /v1/rerank``: the Cohere v1 / Jina shape."""

    return_documents: bool | None = None
    rank_fields: list[str] | None = None
    max_chunks_per_doc: Count | None = None


class RerankRequestV2(CohereRerankRequest):
    """``POST /v2/rerank``: the Cohere v2 shape (documents are strings; objects with
    ``text`` are accepted as on v1)."""

    priority: Integer | None = Field(None, description="accepted and ignored")


class TeiRerankRequest(Lenient):
    """``POST /rerank``: the text-embeddings-inference shape."""

    query: NonBlank
    texts: Annotated[list[str], Field(min_length=1)]
    raw_scores: bool | None = Field(
        None, description="true: the model's own score (cosine or logit), not mapped to [0, 1]"
    )
    return_text: bool | None = None
    truncate: bool | None = Field(
        None, description="accepted; texts are always cut to the model's max length"
    )
    truncation_direction: Literal["right", "Right"] | None = None
    top_n: Count | None = Field(None, description="return the best n (TEI itself ignores it)")
    budget_ms: BudgetMs | None = None


_RELEVANCE = (
    "in [0, 1]: sigmoid of a cross-encoder's logit, (1 + cosine) / 2 for a bi-encoder; 0.0 "
    "for a document the caller's budget left unscored"
)
_ID = "the request id, as in `X-Request-ID`"
_MODEL = "the model that scored (not the one asked for)"


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description=_RELEVANCE)
    document: dict[str, Any] | None = None


class RerankResultV2(BaseModel):
    index: int
    relevance_score: float = Field(description=_RELEVANCE)


class RerankMeta(BaseModel):
    partial: bool = Field(
        description="true when the caller's budget cut scoring: the `scored` documents come "
        "first, the others follow in request order with the lowest score"
    )
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
    id: str = Field(description=_ID)
    model: str = Field(description=_MODEL)
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


class RerankResponseV2(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: str = Field(description=_ID)
    model: str = Field(description=_MODEL)
    results: list[RerankResultV2]
    usage: RerankUsage
    meta: RerankMeta


class TeiRank(BaseModel):
    index: int
    text: str | None = None
    score: float


class TeiRerankResponse(RootModel[list[TeiRank]]):
    """Best first. ``X-Rerank-Scored`` and ``X-Rerank-Partial`` say whether the caller's
    budget cut scoring (the unscored texts then come last with the lowest score)."""


class TeiError(BaseModel):
    """The error body on ``/rerank``, as text-embeddings-inference (and Elasticsearch's
    ``hugging_face`` service, which reads ``error`` as a string) have it."""

    error: str
    error_type: Literal["validation", "unauthorized", "overloaded", "unhealthy", "backend"]


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
