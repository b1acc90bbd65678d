"""Elasticsearch faults through the real AsyncElasticsearch client and the stand-in: each
fault gets the status and flags the docs promise, within the budget; and the circuit breaker
opens, probes and closes."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from rerank.engine import ScoringEngine
from retrieval.breaker import CircuitBreaker, CircuitOpen, GuardedBackend, State
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.errors import BackendTimeout, BackendUnavailable
from retrieval.types import SubQuery
from tests.es_standin import StandIn
from tests.support import MakeApp

INDEX = "docs"
BUDGET_MS = 400.0
# What a request may take beyond its budget on a shared, loaded CI machine.
MARGIN_S = 0.35


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def standin(es_small: tuple[StandIn, str]) -> tuple[StandIn, str]:
    return es_small  # SMALL_CORPUS as INDEX


async def _client(
    make_app: MakeApp,
    engine: ScoringEngine,
    url: str,
    breaker: CircuitBreaker | None = None,
    **cfg: Any,
) -> TestClient:
    config = Config().override(**({"budget_ms": BUDGET_MS, "chunks": 2} | cfg))
    backend = ElasticBackend(make_client(url, timeout_s=5), INDEX, timeout_s=5)
    guarded = GuardedBackend(backend, breaker or CircuitBreaker(threshold=100))
    return await make_app(config=config, engine_=engine, backend=guarded)


async def _search(client: TestClient, **extra: Any) -> tuple[int, Any, Any, float]:
    t0 = time.monotonic()
    payload = {"query": "wing lift", "subqueries": ["heat transfer", "pasta tomato"], **extra}
    resp = await client.post("/v1/search", data=orjson.dumps(payload))
    return resp.status, await resp.json(), resp.headers, time.monotonic() - t0


def _has(bodies: list[dict[str, Any]], word: str) -> bool:
    return any(word in orjson.dumps(b["query"]).decode() for b in bodies)


async def test_es_slower_than_the_retrieval_timeout_answers_504_within_it(
    standin: tuple[StandIn, str], make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    es, url = standin
    es.delay = lambda bodies: 5.0
    client = await _client(make_app, tiny_engine, url, retrieval_timeout_ms=1000.0)
    status, body, headers, took = await _search(client)
    assert took < 1.0 + MARGIN_S
    # ES's own timeout (90% of the budget) or, on a late loop, the request's deadline:
    # either way nothing was retrieved in time, a 504, never an empty 200.
    assert status == 504, body
    assert body["error"]["code"] == "retrieval_timeout"
    assert "deadline" in body["error"]["message"]
    assert headers["Retry-After"] == "1"  # every 503 and 504 says when to come back


async def test_es_timeout_comes_from_the_remaining_budget(
    standin: tuple[StandIn, str],
) -> None:
    es, url = standin
    es.delay = lambda bodies: 5.0
    backend = ElasticBackend(make_client(url, timeout_s=5), INDEX, timeout_s=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendTimeout) as info:
            await backend.search_chunk([SubQuery.match("wing")], 3, deadline=t0 + 0.2)
        took = time.monotonic() - t0
        assert 0.15 <= info.value.timeout_s <= 0.2
        assert took < 0.2 + MARGIN_S
    finally:
        await backend.close()


async def test_connection_refused_answers_503_fast(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await _client(make_app, tiny_engine, f"http://127.0.0.1:{port}")
    status, body, headers, took = await _search(client)
    assert status == 503 and body["error"]["code"] == "retrieval_unavailable"
    assert "ConnectionError" in body["error"]["message"]
    assert "Retry-After" in headers
    assert took < BUDGET_MS / 1000 + MARGIN_S


@pytest.mark.parametrize(
    ("status_code", "words"), [(500, "HTTP 500"), (503, "HTTP 503"), (429, "shedding load")]
)
async def test_every_chunk_failing_answers_503_naming_the_cause(
    standin: tuple[StandIn, str],
    make_app: MakeApp,
    tiny_engine: ScoringEngine,
    status_code: int,
    words: str,
) -> None:
    es, url = standin
    es.fail_status = lambda bodies: status_code
    client = await _client(make_app, tiny_engine, url)
    status, body, headers, took = await _search(client)
    assert status == 503 and body["error"]["code"] == "retrieval_unavailable"
    assert words in body["error"]["message"]
    assert "Retry-After" in headers
    assert took < BUDGET_MS / 1000 + MARGIN_S


@pytest.mark.parametrize("status_code", [429, 502])
async def test_one_chunk_failing_answers_with_the_rest_flagged(
    standin: tuple[StandIn, str],
    make_app: MakeApp,
    tiny_engine: ScoringEngine,
    status_code: int,
) -> None:
    es, url = standin
    es.fail_status = lambda bodies: status_code if _has(bodies, "pasta") else None
    client = await _client(make_app, tiny_engine, url)
    status, body, _, _ = await _search(client)
    assert status == 200, body
    assert body["partial"] is True
    assert [p["subqueries"] for p in body["lost"]] == [[1]]  # "pasta tomato" only
    assert str(status_code) in body["lost"][0]["error"]
    assert "wing" in {h["id"] for h in body["hits"]}
    assert "pasta" not in {h["id"] for h in body["hits"]}


@pytest.mark.parametrize(
    "raw",
    [b"this is not json", b"[1, 2, 3]", b'{"responses": "nope"}', b'{"responses": [1]}'],
)
async def test_malformed_answers_are_a_clear_503(
    standin: tuple[StandIn, str], make_app: MakeApp, tiny_engine: ScoringEngine, raw: bytes
) -> None:
    es, url = standin
    es.malformed = lambda bodies: raw
    client = await _client(make_app, tiny_engine, url)
    status, body, _, _ = await _search(client)
    assert status == 503, body
    assert body["error"]["code"] == "retrieval_unavailable"


async def test_malformed_item_loses_only_that_query(
    standin: tuple[StandIn, str], make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    es, url = standin
    es.item_extra = lambda body: (
        {"hits": {"hits": [{"no_id": 1}]}} if _has([body], "heat") else None
    )
    client = await _client(make_app, tiny_engine, url)
    status, body, _, _ = await _search(client)
    assert status == 200 and body["partial"] is True
    assert [(p["subqueries"], p["error"][:14]) for p in body["lost"]] == [([0], "malformed hit:")]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"timed_out": True}, "timed out"),
        ({"_shards": {"total": 3, "successful": 2, "failed": 1}}, "1 shard(s) failed"),
    ],
)
async def test_incomplete_items_keep_their_hits_and_are_flagged(
    standin: tuple[StandIn, str],
    make_app: MakeApp,
    tiny_engine: ScoringEngine,
    extra: dict[str, Any],
    reason: str,
) -> None:
    es, url = standin
    es.item_extra = lambda body: extra if _has([body], "heat") else None
    client = await _client(make_app, tiny_engine, url)
    status, body, _, _ = await _search(client)
    assert status == 200 and body["partial"] is True
    (lost,) = body["lost"]
    assert lost["subqueries"] == [0] and "incomplete" in lost["error"] and reason in lost["error"]
    assert "heat" in body["subqueries"][0]["ids"]  # its hits were used


async def test_breaker_opens_fails_fast_probes_and_closes(
    standin: tuple[StandIn, str], make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    es, url = standin
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=5.0, clock=clock)
    client = await _client(make_app, tiny_engine, url, breaker=breaker, chunks=1)
    es.fail_status = lambda bodies: 503
    for _ in range(2):
        status, _, _, _ = await _search(client)
        assert status == 503
    assert breaker.state is State.OPEN and breaker.opened == 1
    calls = len(es.msearch_calls)
    status, body, headers, took = await _search(client)
    assert status == 503 and "circuit open" in body["error"]["message"]
    assert len(es.msearch_calls) == calls  # the cluster was not asked
    assert headers["Retry-After"] == "5"  # when the next probe may go out
    assert took < 0.5
    # After the cool-down one probe goes out; it fails: open again for another cool-down.
    clock.now += 5.0
    status, _, _, _ = await _search(client)
    assert status == 503 and len(es.msearch_calls) == calls + 1
    assert breaker.state is State.OPEN and breaker.opened == 2
    # The cluster recovers; the next probe succeeds and closes the breaker.
    es.fail_status = lambda bodies: None
    clock.now += 5.0
    status, body, _, _ = await _search(client)
    assert status == 200 and body["partial"] is False
    assert breaker.state is State.CLOSED
    status, _, _, _ = await _search(client)
    assert status == 200


async def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=1.0, clock=clock)
    breaker.failure()
    with pytest.raises(CircuitOpen):
        breaker.before()
    clock.now += 1.0
    breaker.before()  # the probe
    assert breaker.state is State.HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.before()  # others still fail fast while the probe is out
    breaker.abandon()  # the probe was cancelled: no verdict, the next request probes
    breaker.before()
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.retry_after_s() == 0.0


async def test_tiny_budget_timeouts_do_not_open_the_breaker(
    standin: tuple[StandIn, str],
) -> None:
    es, url = standin
    es.delay = lambda bodies: 1.0
    breaker = CircuitBreaker(threshold=1, cooldown_s=60)
    backend = GuardedBackend(ElasticBackend(make_client(url), INDEX), breaker, min_timeout_s=0.1)
    try:
        with pytest.raises(BackendUnavailable):
            await backend.search_chunk([SubQuery.match("wing")], 3, time.monotonic() + 0.02)
        assert breaker.state is State.CLOSED
        with pytest.raises(BackendUnavailable):
            await backend.search_chunk([SubQuery.match("wing")], 3, time.monotonic() + 0.3)
        assert breaker.state is State.OPEN
    finally:
        await backend.close()
