"""Request and response shapes. The same models validate requests and generate
``/openapi.json``, so the published contract cannot drift from what the server enforces."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


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


class SubQueryIn(Strict):
    """A retrieval sub-query: text (optionally on one field), or a list of document ids."""

    text: NonBlank | None = None
    field: Literal["title", "text"] | None = None
    ids: Annotated[list[NonBlank], Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SubQueryIn:
        if (self.text is None) == (self.ids is None):
            raise ValueError("give exactly one of `text` or `ids`")
        if self.ids is not None and self.field is not None:
            raise ValueError("`field` applies to `text` sub-queries only")
        return self


class SearchRequest(Strict):
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
    subqueries: list[NonBlank | SubQueryIn] = Field(default_factory=list)
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
