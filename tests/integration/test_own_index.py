"""Issue 12, search side: a search team's own Elasticsearch index (its field names, its
query DSL) through /v1/search, against noida-db (a real Elasticsearch-API engine written
by others, driven by the unmodified client); the embedded backend's side of the same
contract (DSL is a clear 422) without a cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from app.config import Config
from app.services import open_services
from retrieval.backend import Backend
from retrieval.breaker import GuardedBackend, State
from retrieval.config import RetrievalConfig
from retrieval.elastic.index import index_documents
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.embedded.search import EmbeddedBackend
from retrieval.errors import IndexMismatch
from retrieval.factory import open_backend
from retrieval.types import SubQuery
from tests.es_standin import StandIn
from tests.support import SMALL_CORPUS, MakeApp
from tests.unit.test_dsl import SUBSET_CASES

ROOT = Path(__file__).resolve().parents[2]
FRENCH = {"pasta", "football"}  # tagged lang=fr; the rest is en
BOOL_FR = {
    "bool": {
        "should": [{"match": {"body": "team"}}, {"match": {"body": "pasta"}}],
        "filter": [{"term": {"lang": "fr"}}],
    }
}


@pytest.fixture
async def own_index(noida_url: str, noida_index: str) -> AsyncIterator[str]:
    """SMALL_CORPUS as a search team would have it: fields name/body/lang, english
    analysis, a physical index behind an alias (the name the service is given), and one
    document without a body."""
    es = AsyncElasticsearch(noida_url, request_timeout=30)
    physical = f"{noida_index}-1"
    try:
        await es.indices.create(
            index=physical,
            mappings={
                "properties": {
                    "name": {"type": "text", "analyzer": "english"},
                    "body": {"type": "text", "analyzer": "english"},
                    "lang": {"type": "keyword"},
                }
            },
        )
        docs = [
            {
                "_index": physical,
                "_id": d.doc_id,
                "name": d.title,
                "body": d.text,
                "lang": "fr" if d.doc_id in FRENCH else "en",
            }
            for d in SMALL_CORPUS
        ]
        docs.append({"_index": physical, "_id": "nobody", "name": "Supersonic notes", "lang": "en"})
        await async_bulk(es, docs, refresh=True)
        await es.indices.put_alias(index=physical, name=noida_index)
        yield noida_index
    finally:
        await es.close()


def _backend(url: str, index: str, text_field: str = "body") -> Backend:
    config = RetrievalConfig(
        es_url=url, es_index=index, es_title_field="name", es_text_field=text_field
    )
    return open_backend(config)  # the production wiring: breaker in front of the client


async def _search(client: TestClient, body: dict[str, Any] | bytes) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await client.post("/v1/search", data=data)
    return resp.status, await resp.json()


async def test_own_field_names_end_to_end(
    noida_url: str, own_index: str, make_app: MakeApp
) -> None:
    backend = _backend(noida_url, own_index)
    await backend.check()  # through the alias: the mapping answers keyed by the physical index
    client = await make_app(backend=backend, budget_ms=60_000)
    status, body = await _search(
        client,
        {
            "query": "wings in slipstreams",  # english stemming: wings -> wing
            "subqueries": [{"text": "panels", "field": "text"}, "supersonic"],
        },
    )
    assert status == 200, body
    assert body["backend"] == "elasticsearch" and body["lost"] == []
    assert body["hits"][0] == body["hits"][0] | {"id": "wing", "title": SMALL_CORPUS[0].title}
    subs = {s["index"]: s["ids"] for s in body["subqueries"]}
    assert subs[0] == ["panel"]
    # The document without a body is found by its name, read, and scored: no crash.
    assert set(subs[1]) == {"panel", "nobody"}
    assert "nobody" in {h["id"] for h in body["hits"]}
    assert (await client.get("/readyz")).status == 200
    await backend.close()


async def test_a_missing_field_is_named_at_start_up(
    noida_url: str, own_index: str, default_model_dir: Path
) -> None:
    backend = _backend(noida_url, own_index, text_field="content")
    with pytest.raises(IndexMismatch) as err:
        await backend.check()
    assert "field 'content' does not exist" in str(err.value)
    assert own_index in str(err.value) and "body, lang, name" in str(err.value)
    assert not await backend.ping()  # readiness says so too
    await backend.close()
    # `serve` stops with that one line, before it listens.
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--es-url",
            noida_url,
            "--es-index",
            own_index,
            "--es-title-field",
            "name",
            "--es-text-field",
            "content",
            "--model-dir",
            str(default_model_dir),
            "--port",
            "1",  # never bound: the check fails first
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [
        "python -m app serve: error: field 'content' does not exist (fields there: body, "
        "lang, name) "
        f"in index '{own_index}' (index '{own_index}-1')"
    ]
    assert "Traceback" not in proc.stderr


async def test_unreachable_at_start_serves_unready(default_model_dir: Path) -> None:
    """A cluster down at start-up is not a set-up error: the service starts, unready (its
    field check runs once the cluster answers a /readyz ping)."""
    server = TestServer(StandIn().app(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    await server.close()  # nothing listens there any more
    cfg = Config().override(es_url=url, es_text_field="content", model_dir=default_model_dir)
    svc = await open_services(cfg)
    try:
        assert svc.backend.name == "elasticsearch"
        assert not await svc.backend.ping()
    finally:
        await svc.close()


async def test_dsl_filter_with_match_query_false(
    noida_url: str, own_index: str, make_app: MakeApp
) -> None:
    backend = _backend(noida_url, own_index)
    client = await make_app(backend=backend, budget_ms=60_000)
    status, body = await _search(
        client,
        # The query string only steers the model; retrieval is the DSL alone.
        {"query": "wing lift", "match_query": False, "subqueries": [{"query": BOOL_FR}]},
    )
    assert status == 200, body
    assert {h["id"] for h in body["hits"]} == FRENCH  # not "wing": the filter holds
    assert sorted(body["subqueries"][0]["ids"]) == sorted(FRENCH)
    # The same query with the main query retrieving too brings "wing" back.
    status, body = await _search(client, {"query": "wing lift", "subqueries": [{"query": BOOL_FR}]})
    assert status == 200 and "wing" in {h["id"] for h in body["hits"]}
    await backend.close()


async def test_equal_dsl_queries_are_sent_once(
    noida_url: str, own_index: str, make_app: MakeApp
) -> None:
    standin = StandIn(upstream=noida_url)  # records what is sent, forwards to noida
    server = TestServer(standin.app(), host="127.0.0.1")
    await server.start_server()
    backend = _backend(str(server.make_url("")).rstrip("/"), own_index)
    client = await make_app(backend=backend, budget_ms=60_000)
    # Same query, keys in another order and other whitespace, written by hand.
    raw = (
        b'{"query": "pasta", "match_query": false, "subqueries": ['
        + orjson.dumps({"query": BOOL_FR})
        + b', {"query": {"bool": {"filter": [ {"term": {"lang": "fr"}} ],\n'
        b'  "should": [{"match": {"body": "team"}}, {"match": {"body": "pasta"}}]}}}]}'
    )
    status, body = await _search(client, raw)
    assert status == 200, body
    sent = [b["query"] for call in standin.msearch_calls for b in call]
    assert sent == [BOOL_FR]  # one search for the two sub-queries
    first, second = body["subqueries"]
    assert first["ids"] == second["ids"] and set(first["ids"]) == FRENCH
    await backend.close()
    await server.close()


async def test_a_dsl_error_is_422_naming_the_subquery(
    noida_url: str, own_index: str, make_app: MakeApp
) -> None:
    backend = _backend(noida_url, own_index)
    assert isinstance(backend, GuardedBackend)
    client = await make_app(backend=backend, budget_ms=60_000)
    bad = {"bool": {"must": {"no_such_query": {"body": "x"}}}}
    for payload in (
        {"query": "flutter", "subqueries": ["heat", {"query": bad}]},
        {"query": "flutter", "match_query": False, "subqueries": [{"query": bad}]},
    ):
        status, body = await _search(client, payload)
        assert status == 422, body
        err = body["error"]
        assert err["code"] == "invalid_query"
        index = len(payload["subqueries"]) - 1  # type: ignore[arg-type]
        assert err["field"] == f"subqueries[{index}]"
        assert err["message"].startswith(f"subqueries[{index}]: Elasticsearch rejected")
        assert "no_such_query" in err["message"]
    for _ in range(backend.breaker.threshold):
        await _search(client, {"query": "x", "match_query": False, "subqueries": [{"query": bad}]})
    assert backend.breaker.state is State.CLOSED  # the cluster is fine: the query was not
    status, body = await _search(client, {"query": "flutter"})
    assert status == 200 and body["hits"][0]["id"] == "panel"
    await backend.close()


async def test_the_embedded_dsl_subset_finds_what_elasticsearch_finds(
    noida_url: str, noida_index: str, small_backend: EmbeddedBackend
) -> None:
    """The embedded subset's documented semantics, checked against a real engine: the same
    corpus indexed by the service's own helper, the same queries, the same ids."""
    client = make_client(noida_url, timeout_s=30)
    async for _ in index_documents(client, noida_index, SMALL_CORPUS):
        pass
    es = ElasticBackend(client, noida_index)
    queries = [SubQuery.dsl(q) for q, _ in SUBSET_CASES]
    from_es = await es.search_chunk(queries, 10)
    from_embedded = await small_backend.search_chunk(queries, 10)
    for (query, ids), a, b in zip(SUBSET_CASES, from_es, from_embedded, strict=True):
        assert isinstance(a, list) and isinstance(b, list), (query, a, b)
        assert sorted(h.doc_id for h in a) == sorted(h.doc_id for h in b) == ids, query
    await es.close()


# --- the embedded backend: no cluster needed -------------------------------------------


async def test_embedded_answers_its_dsl_subset_and_422_beyond(make_app: MakeApp) -> None:
    client = await make_app(budget_ms=60_000)
    status, body = await _search(
        client, {"query": "wing", "subqueries": ["heat", {"query": {"range": {"year": {"gt": 1}}}}]}
    )
    assert status == 422
    assert body["error"]["code"] == "unsupported_query"
    assert body["error"]["field"] == "subqueries[1]" and "--es-url" in body["error"]["message"]
    # Its subset answers: a bool with a filter, retrieval by the sub-query alone.
    bool_q = {"bool": {"must": {"match": {"text": "flow"}}, "filter": {"term": {"_id": "panel"}}}}
    status, body = await _search(
        client, {"query": "flutter", "match_query": False, "subqueries": [{"query": bool_q}]}
    )
    assert status == 200 and [h["id"] for h in body["hits"]] == ["panel"]


async def test_match_query_false_retrieves_with_subqueries_only(make_app: MakeApp) -> None:
    client = await make_app(budget_ms=60_000)
    status, body = await _search(
        client, {"query": "wing lift", "match_query": False, "subqueries": [{"ids": ["pasta"]}]}
    )
    assert status == 200, body
    assert [h["id"] for h in body["hits"]] == ["pasta"]
    assert body["subqueries"] == [{"index": 0, "ids": ["pasta"]}]
    status, body = await _search(client, {"query": "wing", "match_query": False})
    assert status == 422 and body["error"]["field"] == "subqueries"


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"match_all": {}}
    for _ in range(depth):
        node = {"bool": {"must": node}}
    return node


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ({"bool": {"must": [{"match": {"text": "x" * 5000}}]}}, "subqueries[0].query", "limit"),
        ({"bool": {"must": [_nested(25)]}}, "subqueries[0].query", "deep"),
    ],
)
async def test_dsl_limits(make_app: MakeApp, query: Any, field: str, says: str) -> None:
    client = await make_app(budget_ms=60_000)
    status, body = await _search(client, {"query": "wing", "subqueries": [{"query": query}]})
    assert status == 422 and body["error"]["code"] == "limit_exceeded"
    assert body["error"]["field"] == field and says in body["error"]["message"]


async def test_schema_valid_empty_subquery_object_is_refused_by_the_schema_too(
    make_app: MakeApp,
) -> None:
    """{"subqueries": [{}]} was schema-valid yet a 422; now the schema forbids it too."""
    client = await make_app(budget_ms=60_000)
    status, body = await _search(client, {"query": "wing", "subqueries": [{}]})
    assert status == 422 and body["error"]["field"] == "subqueries[0].text"
    spec = await (await client.get("/openapi.json")).json()
    text = spec["components"]["schemas"]["TextSubQuery"]
    assert text["required"] == ["text"] and text["additionalProperties"] is False
