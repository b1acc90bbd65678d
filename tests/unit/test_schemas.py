"""The published schema and the validation agree: what ``/openapi.json`` calls an integer
is accepted as one (``1.0`` too), and every constraint is published in JSON Schema terms."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from app.config import Config
from app.errors import from_validation
from app.openapi import build_openapi
from app.schemas import SearchRequest


@pytest.mark.parametrize("name", ["size", "candidates", "retrieve"])
def test_integral_float_is_accepted_as_int(name: str) -> None:
    req = SearchRequest.model_validate({"query": "q", name: 3.0})
    assert getattr(req, name) == 3 and type(getattr(req, name)) is int


@pytest.mark.parametrize(
    ("value", "says"),
    [(1.5, "not 1.5"), (True, "not a boolean"), ("3", "valid integer"), (0.0, "greater than")],
)
def test_non_integers_are_refused_by_name(value: Any, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        SearchRequest.model_validate({"query": "q", "size": value})
    err = from_validation(info.value)
    assert err.field == "size" and says in err.message


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_constraints_published_as_json_schema_keywords() -> None:
    """pydantic writes ``ge``/``le`` (not JSON Schema) when a constraint follows a
    validator; clients and schemathesis would then ignore the bound."""
    schema = build_openapi("test")
    assert not _keys(schema) & {"ge", "gt", "le", "lt"}
    size = schema["components"]["schemas"]["SearchRequest"]["properties"]["size"]
    assert {"type": "integer", "minimum": 1, "maximum": 1000} in size["anyOf"]


def test_configured_limits_are_published() -> None:
    """A value the schema allows is not refused by a limit the schema did not state."""
    from app.config import Config

    cfg = Config().override(max_candidates=7, max_query_chars=50, max_documents=9)
    defs = build_openapi("test", cfg)["components"]["schemas"]
    search, rerank = defs["SearchRequest"]["properties"], defs["RerankRequest"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 7} in [
        {k: v for k, v in b.items() if k != "description"} for b in search["candidates"]["anyOf"]
    ]
    assert search["query"]["maxLength"] == 50 and rerank["query"]["maxLength"] == 50
    assert search["subqueries"]["maxItems"] == 100 and rerank["documents"]["maxItems"] == 9


def test_the_dsl_query_schema_is_the_backend_s() -> None:
    """Embedded: one key, of the supported types, each with its shape; Elasticsearch: any
    object (it judges the query itself)."""

    def dsl(cfg: Config) -> dict[str, Any]:
        out: dict[str, Any] = build_openapi("x", cfg)["components"]["schemas"]["DslSubQuery"]
        return out["properties"]["query"]

    embedded = dsl(Config())
    ok = [{"match": {"title": "wing"}}, {"bool": {"must": [{"term": {"_id": "d1"}}]}}]
    for q in ok:
        jsonschema.validate(q, embedded)
    for q in ({}, {"match": 5}, {"wildcard": {"title": "w*"}}, {"match_all": {}, "ids": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(q, embedded)
    es = dsl(Config().override(es_url="http://127.0.0.1:9200"))
    jsonschema.validate({"wildcard": {"title": "w*"}, "x": 1}, es)
