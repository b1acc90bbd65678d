"""Request and response shapes of the three rerank APIs (Cohere v1/Jina, Cohere v2, and
text-embeddings-inference), apart from the search ones in ``app/schemas.py``. Unlike those,
these models are lenient: unknown fields are ignored and optional ones may be null, as the
APIs they copy do, so existing clients work unchanged."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from app.schemas import INTEGRAL, MAX_MS, Integral, NonBlank

Count = Annotated[int, Field(ge=1), INTEGRAL]
BudgetMs = Annotated[
    float,
    Field(
        gt=0,
        le=MAX_MS,
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

    priority: Integral | None = Field(None, description="accepted and ignored")


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
