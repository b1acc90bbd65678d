"""Issue 22 part 4: readiness and answers agree. A cluster down at start-up that comes back
with a configured field missing: searches 503 ``index_mismatch`` naming it and ``/readyz``
says so; a cluster back after an outage: the first good ``/readyz`` probe closes the breaker,
so 200 there means searches work. Against the stand-in and noida-db, each behind a
forwarding port that is switched off and on (the cluster "down", then "up")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from elasticsearch import AsyncElasticsearch

from profiles.process import free_port
from rerank.engine import ScoringEngine
from retrieval.breaker import GuardedBackend, State
from retrieval.config import RetrievalConfig
from retrieval.elastic.index import index_documents
from retrieval.elastic.search import make_client
from retrieval.errors import BackendUnavailable
from retrieval.factory import open_backend
from tests.es_standin import StandIn
from tests.support import SMALL_CORPUS, MakeApp

FIELDS = ("headline", "body")


class Switch:
    """A loopback port that forwards everything to ``target`` while up, and refuses
    connections while down: the same URL for the service throughout."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = f"http://127.0.0.1:{free_port()}"
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def up(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", int(self.url.rsplit(":", 1)[1])).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _forward(self, request: web.Request) -> web.Response:
        self._session = self._session or ClientSession()
        headers = {k: v for k, v in request.headers.items() if k.lower() in {"content-type"}}
        async with self._session.request(
            request.method, f"{self.target}{request.rel_url}", data=await request.read(),
            headers=headers,
        ) as up:  # fmt: skip
            body = await up.read()
            keep = {"content-type", "x-elastic-product"}
            return web.Response(
                body=body,
                status=up.status,
                headers={k: v for k, v in up.headers.items() if k.lower() in keep},
            )

    async def close(self) -> None:
        await self.down()
        if self._session is not None:
            await self._session.close()


@pytest.fixture(params=["standin", "noida"])
async def cluster(
    request: pytest.FixtureRequest, es_standin: tuple[StandIn, str]
) -> AsyncIterator[tuple[Switch, str]]:
    """(a switch in front of the cluster, down; an index with fields headline/body)."""
    if request.param == "noida":
        target, index = request.getfixturevalue("noida_url"), request.getfixturevalue("noida_index")
    else:
        target, index = es_standin[1], "docs"
    es = make_client(target, timeout_s=30)
    async for _ in index_documents(es, index, SMALL_CORPUS, fields=FIELDS):
        pass
    await es.close()
    switch = Switch(target)
    try:
        yield switch, index
    finally:
        await switch.close()


def _backend(url: str, index: str, text_field: str, **extra: Any) -> GuardedBackend:
    config = RetrievalConfig(
        es_url=url, es_index=index, es_title_field="headline", es_text_field=text_field, **extra
    )
    backend = open_backend(config)
    assert isinstance(backend, GuardedBackend)
    return backend


async def _search(client: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        "/v1/search", data=orjson.dumps({"query": "wing lift", "budget_ms": 10_000})
    )
    return resp.status, await resp.json()


async def test_a_field_missing_found_after_start_up_is_503_and_unready(
    cluster: tuple[Switch, str], make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    switch, index = cluster
    backend = _backend(switch.url, index, text_field="content")
    with pytest.raises(BackendUnavailable):
        await backend.check()  # down at start-up: open_services serves anyway, unready
    client = await make_app(backend=backend, engine_=tiny_engine)
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "unreachable" in (await ready.json())["reasons"]["retrieval"]

    await switch.up()
    # A search first (no /readyz probe in between): no answer from the wrong fields.
    status, body = await _search(client)
    assert status == 503, body
    assert body["error"]["code"] == "index_mismatch"
    assert "field 'content' does not exist" in body["error"]["message"]
    ready = await client.get("/readyz")
    health = await ready.json()
    assert ready.status == 503 and health["checks"]["retrieval"] is False
    assert "field 'content' does not exist" in health["reasons"]["retrieval"]
    assert "body, embedding_f16" in health["reasons"]["retrieval"]  # the fields it has
    status, body = await _search(client)  # still, and without asking the mapping again
    assert status == 503 and body["error"]["code"] == "index_mismatch"
    assert backend.breaker.state is State.CLOSED  # a set-up fault, not an outage
    await backend.close()


async def test_the_mapping_fixed_is_seen_by_the_next_readyz(
    noida_url: str, noida_index: str, make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    es = AsyncElasticsearch(noida_url, request_timeout=30)
    async for _ in index_documents(es, noida_index, SMALL_CORPUS, fields=FIELDS):
        pass
    backend = _backend(noida_url, noida_index, text_field="content")
    client = await make_app(backend=backend, engine_=tiny_engine)
    assert (await client.get("/readyz")).status == 503
    assert (await _search(client))[0] == 503
    await es.indices.put_mapping(index=noida_index, properties={"content": {"type": "text"}})
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.json()
    status, body = await _search(client)
    assert status == 200 and body["hits"], body
    await es.close()
    await backend.close()


async def test_readyz_200_after_an_outage_means_searches_work(
    cluster: tuple[Switch, str], make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    switch, index = cluster
    await switch.up()
    # A cool-down far longer than the test: only the probe can close the breaker in time.
    backend = _backend(switch.url, index, "body", breaker_failures=2, breaker_cooldown_s=600)
    client = await make_app(backend=backend, engine_=tiny_engine)
    assert (await _search(client))[0] == 200
    assert (await client.get("/readyz")).status == 200

    await switch.down()
    for _ in range(2):
        status, body = await _search(client)
        assert status == 503 and body["error"]["code"] == "retrieval_unavailable"
    assert backend.breaker.state is State.OPEN
    ready = await client.get("/readyz")
    assert ready.status == 503 and "unreachable" in (await ready.json())["reasons"]["retrieval"]

    await switch.up()
    assert (await client.get("/readyz")).status == 200
    status, body = await _search(client)
    assert status == 200 and body["hits"], body  # not "circuit open" for the cool-down
    assert backend.breaker.state is State.CLOSED
    await backend.close()
