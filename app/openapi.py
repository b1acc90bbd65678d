"""``/openapi.json`` generated from the pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import schemas

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
        op["responses"].update(
            {"400": err, "413": err, "422": err, "500": err, "503": err, "504": err}
        )
    return op


def build_openapi(version: str) -> dict[str, Any]:
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
        "components": {"schemas": defs.get("$defs", {})},
    }
