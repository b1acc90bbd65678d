"""The query DSL object as the embedded index answers it, for ``/openapi.json``: exactly
one key, one of the supported types (``retrieval/embedded/dsl.py``), each with the shape
the translator takes, so what the published schema calls valid is answered. With
Elasticsearch any object is published (Elasticsearch judges it).

Flat on purpose: ``bool`` clauses are published one level deep (leaf queries), since a
recursive schema sends schema-driven fuzzers (hypothesis) into very deep structures;
the server itself accepts nested ``bool``."""

from __future__ import annotations

from typing import Any

from retrieval.embedded.dsl import SUPPORTED, TEXT_FIELDS

_ID_FIELDS = ["_id", "doc_id"]
_OPERATOR = {"enum": ["or", "OR", "and", "AND", None]}
_BOOST = {"type": "number", "minimum": 0}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_VALUE = {"type": ["string", "number"]}


def _one_field(names: list[str], value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "propertyNames": {"enum": names},
        "additionalProperties": value,
    }


def _closed(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


_LEAVES: dict[str, Any] = {
    "match": _one_field(
        list(TEXT_FIELDS),
        {
            "anyOf": [
                {"type": "string"},
                _closed(
                    {"query": {"type": "string"}, "operator": _OPERATOR, "boost": _BOOST},
                    ["query"],
                ),
            ]
        },
    ),
    "multi_match": _closed(
        {
            "query": {"type": "string"},
            "fields": {
                "type": ["array", "null"],
                "items": {"type": "string", "pattern": r"^(title|text)(\^[0-9]+(\.[0-9]+)?)?$"},
            },
            "operator": _OPERATOR,
            "type": {"enum": ["best_fields", "most_fields"]},
            "boost": _BOOST,
        },
        ["query"],
    ),
    "term": _one_field(
        [*TEXT_FIELDS, *_ID_FIELDS],
        {
            "anyOf": [
                _VALUE,
                {"type": "object", "properties": {"value": _VALUE}, "required": ["value"]},
            ]
        },
    ),
    "terms": _one_field([*TEXT_FIELDS, *_ID_FIELDS], _STRINGS),
    "ids": {"type": "object", "properties": {"values": _STRINGS}, "required": ["values"]},
    "match_all": {},
}
assert set(SUPPORTED.split(", ")) == {*_LEAVES, "bool"}, "embedded/dsl.py SUPPORTED changed"


def _query(kinds: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": kinds,
        "additionalProperties": False,
    }


_LEAF = _query(_LEAVES)
_CLAUSE = {"anyOf": [_LEAF, {"type": "array", "items": _LEAF}]}
_BOOL = _closed({k: _CLAUSE for k in ("must", "should", "filter", "must_not")})


def embedded_query_schema() -> dict[str, Any]:
    """The DSL query object the embedded index answers (``{"match": {"title": "x"}}``)."""
    schema = _query({"bool": _BOOL, **_LEAVES})
    schema["description"] = (
        f"an Elasticsearch query object with one key, of the subset the embedded index "
        f"answers: {SUPPORTED} (fields {', '.join(TEXT_FIELDS)}, _id); `bool` may nest "
        "further than published"
    )
    return schema
