"""``/openapi.json`` held to real answers: for a request on every route, the status that
came back is one the document lists for that route and method, the body validates against
the schema it names (a JSON Schema validator, not our own models), and the headers it
promises are there. Requests the document accepts, the server accepts, and the reverse."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.shutdown import DRAINING
from tests.support import MakeApp

KEY = "k-open"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS = ["Wing lift in a slipstream.", "Pasta with tomatoes."]
OK_BODIES: dict[str, Any] = {
    "/v1/search": {"query": "wing lift", "size": 2},
    "/v1/rerank": {"query": "wing", "documents": DOCS, "top_n": 1.0, "return_documents": True},
    "/v2/rerank": {"model": "m", "query": "wing", "documents": DOCS, "max_tokens_per_doc": None},
    "/rerank": {"query": "wing", "texts": DOCS, "return_text": True, "raw_scores": True},
}
BAD_BODIES: dict[str, Any] = {
    "/v1/search": {"query": ""},
    "/v1/rerank": {"query": "wing", "documents": DOCS, "top_n": 1.5},
    "/v2/rerank": {"query": "wing", "documents": []},
    "/rerank": {"query": "wing", "texts": DOCS, "truncation_direction": "Left"},
}


@pytest.fixture
async def client(make_app: MakeApp) -> TestClient:
    return await make_app(api_keys=KEY, max_body_bytes=16 * 1024, budget_ms=60_000)


@pytest.fixture
async def spec(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/openapi.json")  # open even with keys
    assert resp.status == 200
    return dict(await resp.json())


def validate(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """JSON Schema 2020-12 (OpenAPI 3.1's dialect); ``#/components/...`` refs resolve."""
    jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(instance)


def check(
    spec: dict[str, Any], path: str, method: str, status: int, body: Any, headers: Any
) -> None:
    op = spec["paths"][path][method.lower()]
    assert str(status) in op["responses"], f"{method} {path}: {status} undocumented"
    documented = op["responses"][str(status)]
    for name in documented.get("headers", {}):
        assert name in headers, f"{method} {path} {status}: no {name} header"
    ((ctype, media),) = documented["content"].items()
    if ctype == "application/json":
        validate(spec, media["schema"], body)


async def call(
    client: TestClient,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    resp = await client.request(method, path, data=data, headers=headers or {})
    raw = await resp.read()
    parsed = orjson.loads(raw) if resp.content_type == "application/json" else raw.decode()
    return resp.status, parsed, resp.headers


async def test_every_route_and_status_is_documented_and_answers_its_schema(
    client: TestClient, spec: dict[str, Any]
) -> None:
    assert set(spec["paths"]) == {
        "/v1/search", "/v1/rerank", "/v2/rerank", "/rerank",
        "/healthz", "/readyz", "/openapi.json", "/metrics",
    }  # fmt: skip
    assert client.app is not None
    routed = {(r.resource.canonical, r.method.lower()) for r in client.app.router.routes()}
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routed - {(p, "head") for p, _ in routed} == documented
    assert spec["components"]["securitySchemes"]["bearerKey"] == {
        **spec["components"]["securitySchemes"]["bearerKey"],
        "type": "http",
        "scheme": "bearer",
    }
    seen: set[tuple[str, int]] = set()
    for path, ok in OK_BODIES.items():
        op = spec["paths"][path]["post"]
        assert op["security"] == [{"bearerKey": []}]
        validate(spec, op["requestBody"]["content"]["application/json"]["schema"], ok)
        for body, headers, want in [
            (ok, AUTH, 200),
            (ok, {}, 401),
            (BAD_BODIES[path], AUTH, 422),
            (b"{not json", AUTH, 400),
            (orjson.dumps({**ok, "pad": "x" * 20_000}), AUTH, 413),
        ]:
            status, got, hdrs = await call(client, "POST", path, body, headers)
            assert status == want, (path, got)
            check(spec, path, "POST", status, got, hdrs)
            seen.add((path, status))
        with pytest.raises(jsonschema.ValidationError):
            validate(
                spec, op["requestBody"]["content"]["application/json"]["schema"], BAD_BODIES[path]
            )
        status, got, hdrs = await call(client, "GET", path, headers=AUTH)
        assert status == 405
        check(spec, path, "POST", status, got, hdrs)
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        status, got, hdrs = await call(client, "GET", path, headers=AUTH)
        assert status == 200
        check(spec, path, "GET", status, got, hdrs)
    status, got, hdrs = await call(client, "GET", "/metrics")
    assert status == 401 and spec["paths"]["/metrics"]["get"]["security"]
    check(spec, "/metrics", "GET", status, got, hdrs)
    status, got, hdrs = await call(client, "GET", "/no/such/route", headers=AUTH)
    assert status == 404
    check(spec, "/healthz", "GET", status, got, hdrs)  # the body every unknown path gets
    # Draining: /readyz answers 503 with its health body.
    client.app[DRAINING].begin()  # type: ignore[index]
    status, got, hdrs = await call(client, "GET", "/readyz")
    assert status == 503
    check(spec, "/readyz", "GET", status, got, hdrs)


async def test_503_past_the_rerank_limit_is_documented(make_app: MakeApp) -> None:
    client = await make_app(rerank_max_ms=0.001)
    spec = await (await client.get("/openapi.json")).json()
    for path, ok in OK_BODIES.items():
        if path == "/v1/search":
            continue
        body = {**ok, "texts" if path == "/rerank" else "documents": ["new a", "new b", "c"]}
        status, got, hdrs = await call(client, "POST", path, body)
        assert status == 503, got
        check(spec, path, "POST", status, got, hdrs)
        # Without keys the document asks for none.
        assert spec["paths"][path]["post"]["security"] == []
