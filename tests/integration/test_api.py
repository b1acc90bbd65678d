"""The HTTP API over a real loopback socket (aiohttp_client), on the embedded backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from app import rerank_schemas, schemas
from app.shutdown import DRAINING
from retrieval.types import depths
from tests.support import MakeApp

Client = TestClient
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def client(make_app: MakeApp) -> Client:
    return await make_app(
        max_body_bytes=64 * 1024, max_documents=50, max_subqueries=5, budget_ms=60_000
    )


async def post(client: Client, path: str, payload: Any) -> tuple[int, Any, Any]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    return resp.status, await resp.json(), resp.headers


def same_shape(model: type[BaseModel], body: Any) -> None:
    """The hand-built response is exactly what its OpenAPI model declares: it validates, and
    no key is missing from or extra to the model (documents echoed back are free-form)."""

    def keys(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            if path.endswith(".document"):
                return
            assert set(a) == set(b), f"{path}: {set(a) ^ set(b)}"
            for k in a:
                keys(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                keys(x, y, f"{path}[{i}]")

    keys(model.model_validate(body).model_dump(mode="json"), body, model.__name__)


async def test_search_ranks_the_relevant_document_first(client: Client) -> None:
    status, body, headers = await post(
        client, "/v1/search", {"query": "wing lift in a propeller slipstream flow", "size": 3}
    )
    assert status == 200
    same_shape(schemas.SearchResponse, body)
    assert body["hits"][0]["id"] == "wing"
    assert len(body["hits"]) == 3
    h = body["hits"][0]
    assert set(h) == {"id", "title", "score", "retrieval_score", "similarity", "model_score"}
    assert h["similarity"] is None and body["knn"] is None  # hybrid retrieval is off
    assert h["score"] is not None and h["model_score"] is not None and h["retrieval_score"] > 0
    assert body["partial"] is False and body["scored"] == body["candidates"]
    assert body["backend"] == "embedded"
    stages = dict(p.strip().split(";dur=") for p in headers["Server-Timing"].split(","))
    assert {"retrieve", "tokenize", "infer", "total"} <= set(stages)
    assert float(stages["total"]) >= float(stages["infer"]) > 0


async def test_search_subqueries_come_back_per_origin(client: Client) -> None:
    status, body, _ = await post(
        client,
        "/v1/search",
        {
            "query": "flutter",
            "subqueries": [
                "heat transfer",
                {"text": "tomato", "field": "title"},
                {"ids": ["football"]},
                "heat  Transfer",
            ],
        },
    )
    assert status == 200
    subs = {s["index"]: s["ids"] for s in body["subqueries"]}
    assert subs[0] == subs[3] and "heat" in subs[0]
    assert subs[1] == ["pasta"] and subs[2] == ["football"]
    assert {"panel", "heat", "pasta", "football"} <= {h["id"] for h in body["hits"]}


async def test_a_deadline_spent_before_retrieval_answered_is_504(client: Client) -> None:
    """Nothing retrieved by the caller's deadline: a timeout, never an empty 200 (issue 12)."""
    status, body, _ = await post(
        client, "/v1/search", {"query": "wing flutter heat boundary", "deadline_ms": 0.001}
    )
    assert status == 504
    assert body["error"]["code"] == "retrieval_timeout"
    assert "deadline" in body["error"]["message"]


async def test_rerank_has_the_cohere_shape(client: Client) -> None:
    docs = [
        "Pasta with tomatoes.",
        {"text": "The wing lift rises in the slipstream.", "title": "Wings", "extra": 1},
        "Football scores.",
    ]
    status, body, headers = await post(
        client,
        "/v1/rerank",
        {"query": "wing lift", "documents": docs, "top_n": 2, "return_documents": True},
    )
    assert status == 200
    same_shape(rerank_schemas.RerankResponse, body)
    assert body["results"][0]["index"] == 1
    assert len(body["results"]) == 2
    r0 = body["results"][0]
    assert r0["document"]["text"] == docs[1]["text"]  # type: ignore[index]
    assert r0["relevance_score"] > body["results"][1]["relevance_score"]
    assert isinstance(body["id"], str) and body["usage"]["total_tokens"] > 0
    assert "Server-Timing" in headers
    status, body, _ = await post(client, "/v1/rerank", {"query": "wing", "documents": ["a", "b"]})
    assert status == 200 and all("document" not in r for r in body["results"])
    assert sorted(r["index"] for r in body["results"]) == [0, 1]


@pytest.mark.parametrize(
    ("path", "payload", "status", "field"),
    [
        ("/v1/search", b"{not json", 400, None),
        ("/v1/search", b"[1, 2]", 422, None),
        ("/v1/search", {"query": ""}, 422, "query"),
        ("/v1/search", {"query": "   "}, 422, "query"),
        ("/v1/search", {"query": 5}, 422, "query"),
        ("/v1/search", {"query": "x", "size": "ten"}, 422, "size"),
        ("/v1/search", {"query": "x", "size": 0}, 422, "size"),
        ("/v1/search", {"query": "x", "budget_ms": -1}, 422, "budget_ms"),
        ("/v1/search", {"query": "x", "unknown": 1}, 422, "unknown"),
        ("/v1/search", {"query": "x", "candidates": 100000}, 422, "candidates"),
        ("/v1/search", {"query": "x", "subqueries": ["a"] * 6}, 422, "subqueries"),
        (
            "/v1/search",
            {"query": "x", "subqueries": [{"text": "a", "ids": ["1"]}]},
            422,
            "subqueries[0].text",  # an ids sub-query has no `text`
        ),
        ("/v1/search", {"query": "x", "subqueries": [{"ids": []}]}, 422, "subqueries[0].ids"),
        ("/v1/rerank", {"query": "x", "documents": []}, 422, "documents"),
        ("/v1/rerank", {"query": "x", "documents": [1]}, 422, "documents[0]"),
        (
            "/v1/rerank",
            {"query": "x", "documents": [{"title": "no text"}]},
            422,
            "documents[0].text",
        ),
        ("/v1/rerank", {"query": "x", "documents": ["d"] * 51}, 422, "documents"),
        ("/v1/rerank", {"documents": ["d"]}, 422, "query"),
        ("/v1/rerank", {"query": "x", "documents": ["d"], "top_n": 0}, 422, "top_n"),
        ("/v1/rerank", {"query": "x", "documents": ["d" * 70_000]}, 413, "body"),
    ],
)
async def test_bad_input_gets_a_4xx_naming_the_field(
    client: Client, path: str, payload: Any, status: int, field: str | None
) -> None:
    got, body, headers = await post(client, path, payload)
    assert got == status, body
    same_shape(schemas.ErrorResponse, body)
    assert body["error"]["field"] == field
    assert body["error"]["message"]
    if field:
        assert body["error"]["message"].startswith(field)
    assert "Server-Timing" in headers


async def test_unknown_route_and_method_are_json_4xx(client: Client) -> None:
    resp = await client.get("/v1/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await client.get("/v1/search")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_health_ready_and_openapi(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["checks"] == {
        "model": True,
        "retrieval": True,
        "documents": True,
    }
    spec = await (await client.get("/openapi.json")).json()
    comps = spec["components"]["schemas"]
    # Generated from the validating models: their constraints show up in the spec.
    assert comps["SearchRequest"]["required"] == ["query"]
    assert comps["SearchRequest"]["additionalProperties"] is False
    assert "top_n" in comps["RerankRequest"]["properties"]
    for path in ("/v1/search", "/v1/rerank", "/healthz", "/readyz"):
        assert path in spec["paths"]


async def test_openapi_matches_the_validators() -> None:
    """Every request the spec forbids (an extra property) the server rejects, and vice versa."""
    from app.openapi import build_openapi
    from app.schemas import SearchRequest

    spec = build_openapi("x")
    props = set(spec["components"]["schemas"]["SearchRequest"]["properties"])
    assert props == set(SearchRequest.model_fields)


async def test_the_app_create_app_builds_drains_like_the_served_one(client: Client) -> None:
    """The drain is part of the app tests get, not added by ``serve()`` alone: once it
    begins, /readyz is 503 and every answer closes its connection."""
    drain = client.app[DRAINING]  # type: ignore[index]
    resp = await client.get("/healthz")
    assert resp.status == 200 and resp.headers.get("Connection") != "close"
    drain.begin()
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["status"] == "draining"
    assert ready.headers["Retry-After"] and ready.headers["Connection"] == "close"
    status, _, headers = await post(client, "/v1/rerank", {"query": "q", "documents": ["a"]})
    assert status == 200 and headers["Connection"] == "close"


async def test_the_main_query_is_fetched_only_as_deep_as_ranking_reads(
    make_app: MakeApp, small_backend: Any
) -> None:
    """The main query's hits past ``max(candidates, size)`` can never reach the answer;
    each of ``subqueries`` still reports its ``retrieve`` ids."""
    asked: list[tuple[str, int]] = []

    class Recording:
        name = small_backend.name

        async def search_chunk(self, queries: Any, k: Any, deadline: Any = None) -> Any:
            asked.extend((q.text, n) for q, n in zip(queries, depths(k, len(queries)), strict=True))
            return await small_backend.search_chunk(queries, k, deadline)

        def __getattr__(self, attr: str) -> Any:
            return getattr(small_backend, attr)

    client = await make_app(backend=Recording(), budget_ms=60_000)
    many = "wing flat flow pasta team"  # each word hits other documents
    payload = {"query": many, "candidates": 2, "size": 3, "retrieve": 5}
    status, body, _ = await post(client, "/v1/search", {**payload, "subqueries": ["heat"]})
    assert status == 200, body
    assert dict(asked) == {many: 3, "heat": 5}
    assert len(body["hits"]) == 3
    # The same text as main query and sub-query is sent once, as deep as the deeper asks.
    asked.clear()
    status, body, _ = await post(client, "/v1/search", {**payload, "subqueries": [many.upper()]})
    assert status == 200, body
    assert asked == [(many, 5)]
    assert len(body["subqueries"][0]["ids"]) == 5
