"""``/openapi.json`` generated from the pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import schemas
from app.config import Config

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _op(summary: str, req: type[BaseModel] | None, resp: type[BaseModel]) -> dict[str, Any]:
    err = {
        "description": "error",
        "content": {"application/json": {"schema": _ref(schemas.ErrorResponse)}},
    }
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": _ref(resp)}}}
        },
    }
    if req is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(req)}},
        }
        op["responses"].update({"400": err, "413": err, "422": err, "500": err, "503": err})
    return op


def _bound(prop: dict[str, Any], key: str, value: int) -> None:
    """Set ``key`` on the non-null branch(es) of a (possibly optional) property."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") not in (None, "null") and key not in branch:
            branch[key] = value


def _publish_limits(defs: dict[str, Any], config: Config) -> None:
    """The configured request limits (``--max-candidates``...) in the schema, so what the
    schema calls valid is accepted (schemathesis' ``positive_data_acceptance``)."""
    lim = config.limits
    search = defs.get("SearchRequest", {}).get("properties", {})
    rerank = defs.get("RerankRequest", {}).get("properties", {})
    for props in (search, rerank):
        if "query" in props:
            _bound(props["query"], "maxLength", lim.max_query_chars)
    if "candidates" in search:
        _bound(search["candidates"], "maximum", lim.max_candidates)
    if "retrieve" in search:
        _bound(search["retrieve"], "maximum", max(lim.max_candidates, config.retrieval.retrieve))
    if "subqueries" in search:
        _bound(search["subqueries"], "maxItems", lim.max_subqueries)
        for branch in search["subqueries"].get("items", {}).get("anyOf", []):
            if branch.get("type") == "string":
                branch["maxLength"] = lim.max_query_chars
    text = defs.get("SubQueryIn", {}).get("properties", {}).get("text")
    if text is not None:
        _bound(text, "maxLength", lim.max_query_chars)
    if "documents" in rerank:
        _bound(rerank["documents"], "maxItems", lim.max_documents)


def build_openapi(version: str, config: Config | None = None) -> dict[str, Any]:
    """``config``: publish its request limits (the served app's); without, the defaults."""
    # Requests are documented as validated, responses as serialised.
    requests: list[type[BaseModel]] = [schemas.SearchRequest, schemas.RerankRequest]
    responses: list[type[BaseModel]] = [
        schemas.SearchResponse,
        schemas.RerankResponse,
        schemas.ErrorResponse,
        schemas.Health,
    ]
    _, defs = models_json_schema(
        [(m, "validation") for m in requests] + [(m, "serialization") for m in responses],
        ref_template=_REF,
    )
    components = defs.get("$defs", {})
    _publish_limits(components, config or Config())
    return {
        "openapi": "3.1.0",
        "info": {"title": "rerank-service", "version": version},
        "paths": {
            "/v1/search": {
                "post": _op(
                    "Retrieve candidates and rerank them",
                    schemas.SearchRequest,
                    schemas.SearchResponse,
                )
            },
            "/v1/rerank": {
                "post": _op(
                    "Rerank given documents (Cohere/Jina shape)",
                    schemas.RerankRequest,
                    schemas.RerankResponse,
                )
            },
            "/healthz": {"get": _op("Process is alive", None, schemas.Health)},
            "/readyz": {"get": _op("Model loaded and retrieval reachable", None, schemas.Health)},
        },
        "components": {"schemas": components},
    }
