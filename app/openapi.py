"""``/openapi.json`` generated from the pydantic models that validate requests and write
responses, so the published contract cannot drift from what the server does.

Every route is in it with every status it can answer: the error bodies (TEI's own on
``/rerank``), ``Retry-After`` on 503, and the bearer key when the service runs with keys
(``security`` is set only then, so the document describes the running service)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import paths as routes
from app import rerank_schemas, schemas
from app.config import Config
from app.dsl_schema import embedded_query_schema
from app.rerank_shapes import BUDGET_HEADER, PARTIAL_HEADER, SCORED_HEADER, SHAPES

_REF = "#/components/schemas/{model}"
SCHEME = "bearerKey"

_ERRORS = {
    "400": "malformed body or JSON",
    "401": "no valid API key (`Authorization: Bearer <key>`)",
    "404": "no such route (every unknown path gets this body)",
    "405": "method not allowed on this route",
    "409": "retrieval by vector alone (`hybrid`, `match_query` false) where the index holds no "
    "vectors this model wrote (`python -m app embed` adds them)",
    "413": "body larger than --max-body-bytes",
    "422": "a field or limit violated; the message names it",
    "500": "the model failed",
    "502": "Elasticsearch answered with an error",
    "503": "overloaded, draining, a dependency down, or scoring past --rerank-max-ms; "
    "retry after Retry-After",
    "504": "retrieval did not answer before the request's deadline",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _header(description: str, type_: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


_REQUEST_ID = _header("the caller's X-Request-ID when plain, else a fresh one")
_RETRY_AFTER = _header("seconds to wait before retrying", "integer")
_TIMING = _header("stage durations in ms (retrieve, tokenize, infer, total)")


def _json(description: str, schema: dict[str, Any], **headers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = headers
    return out


def _op(
    summary: str,
    *,
    ok: dict[str, Any],
    errors: Collection[str],
    error: type[BaseModel] = schemas.ErrorResponse,
    request: type[BaseModel] | None = None,
    secured: bool,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    codes = {"404", "405", *errors, *(("401",) if secured else ())}
    responses: dict[str, Any] = {"200": ok}
    for code in sorted(codes):
        headers = {"Retry-After": _RETRY_AFTER} if code == "503" else {}
        responses[code] = _json(_ERRORS[code], _ref(error), **headers)
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    op["security"] = [{SCHEME: []}] if secured else []
    if parameters:
        op["parameters"] = parameters
    if request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(request)}},
        }
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
    reranks = [defs.get(s.request.__name__, {}).get("properties", {}) for s in SHAPES]
    for props in (search, *reranks):
        if "query" in props:
            _bound(props["query"], "maxLength", lim.max_query_chars)
    if "candidates" in search:
        _bound(search["candidates"], "maximum", lim.max_candidates)
    if "retrieve" in search:
        _bound(search["retrieve"], "maximum", max(lim.max_candidates, config.retrieval.retrieve))
    if "subqueries" in search:
        _bound(search["subqueries"], "maxItems", lim.max_subqueries)
        items = search["subqueries"].get("items", {})
        for branch in items.get("oneOf", items.get("anyOf", [])):
            if branch.get("type") == "string":
                branch["maxLength"] = lim.max_query_chars
    text = defs.get("TextSubQuery", {}).get("properties", {}).get("text")
    if text is not None:
        _bound(text, "maxLength", lim.max_query_chars)
    for props in reranks:
        for key in ("documents", "texts"):
            if key in props:
                _bound(props[key], "maxItems", lim.max_documents)


_BODY_ERRORS = ("400", "413", "422", "500", "503")
_BUDGET = {
    "name": BUDGET_HEADER,
    "in": "header",
    "required": False,
    "description": "the caller's deadline in ms, as the body's `budget_ms` (which wins)",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": schemas.MAX_MS},
}
_DEADLINE = {
    "name": schemas.DEADLINE_HEADER,
    "in": "header",
    "required": False,
    "description": schemas.DEADLINE_DESCRIPTION,
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": schemas.MAX_MS},
}


def build_openapi(
    version: str,
    config: Config | None = None,
    auth: bool = False,
    open_paths: Collection[str] = routes.ALWAYS_OPEN,
) -> dict[str, Any]:
    """``config``: publish its request limits (the served app's; without, the defaults);
    ``auth``: the service runs with API keys; ``open_paths`` need none even then."""

    def secured(path: str) -> bool:
        return auth and path not in open_paths

    requests: list[type[BaseModel]] = [schemas.SearchRequest, *(s.request for s in SHAPES)]
    responses: list[type[BaseModel]] = [
        schemas.SearchResponse,
        *(s.response for s in SHAPES),
        schemas.ErrorResponse,
        rerank_schemas.TeiError,
        schemas.Health,
    ]
    _, defs = models_json_schema(
        [(m, "validation") for m in requests] + [(m, "serialization") for m in responses],
        ref_template=_REF,
    )
    std = {"X-Request-ID": _REQUEST_ID, "Server-Timing": _TIMING}
    ops: dict[str, dict[str, Any]] = {
        routes.SEARCH.path: _op(
            "Retrieve candidates and rerank them",
            ok=_json("ok", _ref(schemas.SearchResponse), **std),
            errors=(*_BODY_ERRORS, "409", "502", "504"),
            request=schemas.SearchRequest,
            secured=secured(routes.SEARCH.path),
            parameters=[_DEADLINE],
        )
    }
    for shape in SHAPES:
        headers = dict(std)
        if shape.path == routes.RERANK_TEI.path:
            headers[SCORED_HEADER] = _header("documents the model scored", "integer")
            headers[PARTIAL_HEADER] = _header("`true` when a budget left some unscored")
        ops[shape.path] = _op(
            shape.summary,
            ok=_json("ok", _ref(shape.response), **headers),
            errors=_BODY_ERRORS,
            error=shape.error,
            request=shape.request,
            secured=secured(shape.path),
            parameters=[_BUDGET],
        )
    health = _ref(schemas.Health)
    ops[routes.HEALTHZ.path] = _op(
        "Process is alive", ok=_json("ok", health), errors=(), secured=False
    )
    ready = _op(
        "Model loaded and retrieval reachable",
        ok=_json("ok", health),
        errors=(),
        secured=secured(routes.READYZ.path),
    )
    ready["responses"]["503"] = _json(
        "not ready (or draining after SIGTERM)", health, **{"Retry-After": _RETRY_AFTER}
    )
    ops[routes.READYZ.path] = ready
    ops[routes.OPENAPI.path] = _op(
        "This document",
        ok=_json("the OpenAPI 3.1 document", {"type": "object"}),
        errors=(),
        secured=secured(routes.OPENAPI.path),
    )
    ops[routes.METRICS.path] = _op(
        "Prometheus metrics (text exposition format 0.0.4)",
        ok={"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}},
        errors=(),
        secured=secured(routes.METRICS.path),
    )
    # Every route of the table, and only those (a route without an operation: KeyError).
    paths = {r.path: {r.method.lower(): ops[r.path]} for r in routes.ROUTES}
    components = defs.get("$defs", {})
    config = config or Config()
    _publish_limits(components, config)
    dsl = components.get("DslSubQuery", {}).get("properties", {})
    if "query" in dsl and not config.retrieval.es_url:  # the embedded index: its subset
        dsl["query"] = embedded_query_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "rerank-service", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key from --api-keys / --api-keys-file; required "
                    "only when the service runs with keys",
                }
            },
        },
    }
