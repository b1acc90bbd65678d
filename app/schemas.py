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
    StringConstraints,
    Tag,
)

from rerank.types import FusionMethod

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

MAX_MS = 600_000  # the longest budget or deadline a request may give
DEADLINE_HEADER = "X-Request-Deadline-Ms"  # a frontend's end-to-end deadline
DEADLINE_DESCRIPTION = (
    "the caller's end-to-end deadline in ms from arrival: caps retrieval and ranking both "
    f"(also the `{DEADLINE_HEADER}` header; the sooner of the two wins)"
)


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
            "if": {
                "properties": {"match_query": {"const": False}, "hybrid": {"not": {"const": True}}},
                "required": ["match_query"],
            },
            "then": {"properties": {"subqueries": {"minItems": 1}}, "required": ["subqueries"]},
        }
    )

    query: NonBlank
    size: Annotated[int, Field(ge=1, le=1000), INTEGRAL] | None = None
    candidates: (
        Annotated[int, Field(ge=1, description="how many candidates to rerank"), INTEGRAL] | None
    ) = None
    retrieve: (
        Annotated[
            int,
            Field(ge=1, description="hits each of `subqueries` retrieves and reports in `ids`"),
            INTEGRAL,
        ]
        | None
    ) = None
    fusion: FusionMethod | None = None
    fusion_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    hybrid: bool | None = Field(
        None,
        description="also retrieve by the query's vector (kNN over stored vectors); default "
        "`--hybrid`; where the index has no vectors the kNN part is lost (named in `lost`)",
    )
    subqueries: list[SubQueryIn] = Field(default_factory=list)
    match_query: bool = Field(
        True,
        description="also retrieve with `query` itself; false: retrieve with `subqueries` "
        "only (then required), `query` is only what the model scores against",
    )
    budget_ms: (
        Annotated[
            float,
            Field(
                gt=0,
                le=MAX_MS,
                description="ranking budget in ms (default `--budget-ms`, 20): the answer "
                "leaves at most this long after retrieval has answered, with what was "
                "scored by then (retrieval has its own bound, `--retrieval-timeout-ms`)",
            ),
        ]
        | None
    ) = None
    deadline_ms: (
        Annotated[float, Field(gt=0, le=MAX_MS, description=DEADLINE_DESCRIPTION)] | None
    ) = None


class SearchHit(BaseModel):
    id: str
    title: str
    score: float | None = Field(
        description="fused ranking score; null when this hit was not scored (beyond "
        "`candidates`, or the budget ran out)"
    )
    retrieval_score: float = Field(
        description="lexical (BM25 or the sub-query's own); 0 for a hit only the kNN part found"
    )
    similarity: float | None = Field(
        None, description="cosine to the query's vector, when the kNN part found this hit"
    )
    model_score: float | None


class LostPartOut(BaseModel):
    chunk: int
    subqueries: list[int] = Field(
        description="indexes into the request's `subqueries`; -1 is the main query"
    )
    knn: bool = Field(False, description="the kNN part (hybrid retrieval) was lost")
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
    knn: list[str] | None = Field(
        None, description="ids the kNN part found, best first (hybrid retrieval; null: off)"
    )
    backend: str
    timings: dict[str, float] = Field(
        description="stage durations in ms; `ranking` is the answer less retrieval (what "
        "`budget_ms` bounds), `total` the whole request"
    )


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
    reasons: dict[str, str] = Field(
        default_factory=dict, description="for each failed check, its cause in words"
    )
