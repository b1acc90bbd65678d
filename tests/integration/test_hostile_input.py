"""Hostile and odd input: every one gets a 200 or a clear 4xx naming the problem, never a
5xx; long documents are cut and flagged, not rejected; user text reaches Elasticsearch only
as the text of a match query."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from rerank.engine import ScoringEngine
from retrieval.elastic.index import index_documents
from retrieval.elastic.search import ElasticBackend, make_client
from tests.es_standin import StandIn
from tests.support import SMALL_CORPUS, MakeApp

CFG = Config().override(
    budget_ms=60_000, max_doc_chars=2_000, max_body_bytes=512 * 1024, max_documents=50
)
BIG_TOKEN = "x" * 100_000
ODD_TEXTS = {
    "zero_width": "\u200b\u200c\u200d\ufeff",
    "rtl": "\u202eمرحبا بالعالم שלום עולם\u202c",
    "combining": "Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o" * 50,
    "nul_and_controls": "wing\x00lift\x01\x02\x1b[31m",
    "emoji": "🛩️🌪️ wing 👩‍👩‍👧‍👦",
    "astral_cjk": "𠀀𠀁 翼の揚力 날개",
    "only_punctuation": "?!.,;:*~^()[]{}",
    "lucene_syntax": 'title:wing OR text:* AND NOT "x"~2 \\ /regex/ _id:1',
    "json_dsl_as_text": '{"query": {"match_all": {}}, "script": "1"}',
    "big_token_doc": BIG_TOKEN,
}


@pytest.fixture
async def client(make_app: MakeApp, tiny_engine: ScoringEngine) -> TestClient:
    return await make_app(engine_=tiny_engine, config=CFG)


async def _post(client: TestClient, path: str, payload: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    resp = await client.post(path, data=body)
    return resp.status, await resp.json()


@pytest.mark.parametrize("name", sorted(ODD_TEXTS))
async def test_odd_text_as_query_or_document_never_5xx(client: TestClient, name: str) -> None:
    text = ODD_TEXTS[name]
    status, body = await _post(client, "/v1/rerank", {"query": "wing lift", "documents": [text]})
    assert status == 200, body
    status, body = await _post(client, "/v1/search", {"query": "wing", "subqueries": [text]})
    assert status == 200 or (status == 422 and len(text) > CFG.limits.max_query_chars), body
    status, body = await _post(client, "/v1/rerank", {"query": text[:4000], "documents": ["a"]})
    assert status in (200, 422), body
    if status == 422:
        assert body["error"]["field"] == "query"


async def test_long_documents_are_cut_and_flagged_not_rejected(client: TestClient) -> None:
    docs = ["wing lift " * 1000, "short wing", {"title": "t" * 5000, "text": "x"}, BIG_TOKEN]
    status, body = await _post(
        client, "/v1/rerank", {"query": "wing lift", "documents": docs, "return_documents": True}
    )
    assert status == 200, body
    assert body["meta"]["truncated"] == [0, 2, 3]
    assert len(body["results"]) == 4 and body["meta"]["scored"] == 4
    # The document is returned as sent; only what the model saw was cut.
    by_index = {r["index"]: r for r in body["results"]}
    assert by_index[3]["document"]["text"] == BIG_TOKEN


async def test_a_100kb_query_is_a_clear_422(client: TestClient) -> None:
    for path, payload in [
        ("/v1/rerank", {"query": BIG_TOKEN, "documents": ["a"]}),
        ("/v1/search", {"query": BIG_TOKEN}),
        ("/v1/search", {"query": "wing", "subqueries": [BIG_TOKEN]}),
    ]:
        status, body = await _post(client, path, payload)
        assert status == 422 and body["error"]["code"] == "limit_exceeded", body


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"query": "   ", "documents": ["a"]}, 422, "invalid_field"),
        ({"query": "\t\n\u3000", "documents": ["a"]}, 422, "invalid_field"),
        ({"query": {"match_all": {}}, "documents": ["a"]}, 422, "invalid_field"),
        ({"query": "q", "documents": []}, 422, "invalid_field"),
        ({"query": "q", "documents": [None]}, 422, "invalid_field"),
        ({"query": "q", "documents": ["a"], "top_n": -1}, 422, "invalid_field"),
        # 1e40 (an integral number, though past 64 bits): more than there are, so all.
        (b'{"query": "q", "documents": ["a"], "top_n": 1' + b"0" * 40 + b"}", 200, None),
        (b'{"query": "q", "documents": ["a"], "top_n": 1.5}', 422, "invalid_field"),
        (b'{"query": "q", "documents": ["a"], "budget_ms": 1e309}', 400, "malformed_json"),
        (b'{"query": "q", "documents": ["a"], "budget_ms": 1e-400}', 422, "invalid_field"),
        ({"query": "q", "documents": ["a"] * 51}, 422, "limit_exceeded"),
        (b'{"query": "q", "documents": ["\\ud800"]}', 400, "malformed_json"),
        (b'{"query": "\xff\xfe", "documents": ["a"]}', 400, "malformed_json"),
        (b"[" * 100_000, 400, "malformed_json"),
        (b'{"query": "q", "documents": ["a"]', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"null", 422, "invalid_field"),
    ],
)
async def test_bad_rerank_bodies_are_clear_4xx(
    client: TestClient, payload: Any, status: int, code: str | None
) -> None:
    got, body = await _post(client, "/v1/rerank", payload)
    assert got == status, body
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    "payload",
    [
        {"query": "wing", "subqueries": [{"text": "x", "script": "ctx._source"}]},
        {"query": "wing", "subqueries": [{"query": {"script": {"script": "ctx._source"}}}]},
        {"query": "wing", "subqueries": [{"text": "wing", "field": "_id"}]},
        {"query": "wing", "subqueries": [{"ids": []}]},
        {"query": "wing", "subqueries": [{"text": "\u200b", "ids": ["a"]}]},
        {"query": "wing", "candidates": 0},
        {"query": "wing", "size": 10**6},
        {"query": "wing", "fusion": "script"},
        {"query": "wing", "retrieve": 10**9},
        {"query": "wing", "subqueries": ["w"] * 101},
        {"query": "wing", "budget_ms": 0},
        {"query": "wing", "index": "other-index"},
    ],
)
async def test_bad_search_bodies_are_clear_422(client: TestClient, payload: Any) -> None:
    status, body = await _post(client, "/v1/search", payload)
    assert status == 422, body
    # The DSL sub-query is well-formed: the embedded index says it cannot answer it.
    assert body["error"]["code"] in {"invalid_field", "limit_exceeded", "unsupported_query"}


async def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    status, body = await _post(
        client, "/v1/rerank", {"query": "q", "documents": ["a" * (600 * 1024)]}
    )
    assert status == 413 and body["error"]["code"] == "body_too_large"


@pytest.fixture
async def es_client(
    es_standin: tuple[StandIn, str], make_app: MakeApp, tiny_engine: ScoringEngine
) -> AsyncIterator[tuple[StandIn, TestClient]]:
    standin, url = es_standin
    es = make_client(url, timeout_s=10)
    async for _ in index_documents(es, "documents", SMALL_CORPUS):
        pass
    backend = ElasticBackend(es, "documents")
    yield standin, await make_app(engine_=tiny_engine, backend=backend, config=CFG)
    await backend.close()


async def test_user_text_reaches_elasticsearch_only_as_match_text(
    es_client: tuple[StandIn, TestClient],
) -> None:
    standin, client = es_client
    hostile = [ODD_TEXTS["lucene_syntax"], ODD_TEXTS["json_dsl_as_text"], ODD_TEXTS["rtl"]]
    status, body = await _post(
        client,
        "/v1/search",
        {"query": hostile[0], "subqueries": [hostile[1], {"text": hostile[2], "field": "title"}]},
    )
    assert status == 200, body
    sent = standin.queries_sent()
    assert len(sent) == 3
    allowed = {"multi_match", "match"}
    for q in sent:
        ((kind, spec),) = q.items()
        assert kind in allowed
        if kind == "multi_match":
            assert set(spec) == {"query", "fields", "type"} and isinstance(spec["query"], str)
            assert spec["type"] == "most_fields"
        else:
            ((fld, inner),) = spec.items()
            assert fld in {"title", "text"} and set(inner) == {"query"}
    texts = [q.get("multi_match", {}).get("query") for q in sent]
    assert " ".join(hostile[0].split()).lower() in texts
