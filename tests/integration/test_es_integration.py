"""The Elasticsearch scenarios against a real cluster: set ES_URL (e.g. http://localhost:9200,
a 9.x cluster). Fault and delay scenarios go through the stand-in used as a proxy in front of
the real cluster, so the injected faults are the same as in tests/integration/test_elastic.py."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from retrieval.elastic.index import index_documents
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.fanout import RetrievalRun
from retrieval.types import SubQuery
from tests.es_standin import StandIn

# Issue 12's own-index scenarios (field names, start-up check, DSL, match_query false),
# written against noida-db, rerun here on the real cluster: the two fixtures below stand in
# for noida's, so ``own_index`` builds its alias and index on ES_URL.
from tests.integration.test_own_index import (  # noqa: F401  (collected here too)
    own_index,
    test_a_dsl_error_is_422_naming_the_subquery,
    test_a_missing_field_is_named_at_start_up,
    test_dsl_filter_with_match_query_false,
    test_equal_dsl_queries_are_sent_once,
    test_own_field_names_end_to_end,
)
from tests.support import SMALL_CORPUS

ES_URL = os.environ.get("ES_URL")
pytestmark = pytest.mark.skipif(
    not ES_URL, reason="ES_URL is not set: no real Elasticsearch cluster to test against"
)


@pytest.fixture
def noida_url() -> str:
    assert ES_URL
    return ES_URL


@pytest.fixture
async def noida_index() -> AsyncIterator[str]:
    """A fresh lower-case name; ``own_index`` puts an alias of it on ``NAME-1``."""
    assert ES_URL
    name = f"rerank-own-{uuid.uuid4().hex[:8]}"
    yield name
    client = make_client(ES_URL, timeout_s=30)
    await client.options(ignore_status=404).indices.delete(index=f"{name}-1")
    await client.close()


@pytest.fixture
async def real_index() -> AsyncIterator[str]:
    assert ES_URL
    name = f"rerank-test-{uuid.uuid4().hex[:8]}"
    client = make_client(ES_URL, timeout_s=30)
    async for _ in index_documents(client, name, SMALL_CORPUS):
        pass
    yield name
    await client.options(ignore_status=404).indices.delete(index=name)
    await client.close()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[StandIn, str]]:
    standin = StandIn(upstream=ES_URL)
    server = TestServer(standin.app(), host="127.0.0.1")
    await server.start_server()
    yield standin, str(server.make_url("")).rstrip("/")
    await server.close()


def _text(body: dict[str, Any]) -> str:
    q = body["query"]
    return str(q["multi_match"]["query"]) if "multi_match" in q else ""


async def test_dedup_and_chunks_on_a_real_cluster(
    real_index: str, proxy: tuple[StandIn, str]
) -> None:
    standin, url = proxy
    backend = ElasticBackend(make_client(url), real_index)
    words = ["wing", "flutter", "heat", "boundary", "pasta"]
    queries = [SubQuery.match(words[i % 5]) for i in range(50)]
    run = RetrievalRun(backend, queries, k=3, n_chunks=3)
    _ = [c async for c in run.stream()]
    sent = [_text(b) for call in standin.msearch_calls for b in call]
    assert sorted(sent) == sorted(words) and len(standin.msearch_calls) == 3
    per = run.report.per_origin
    assert all(per[i] == per[i % 5] and per[i] for i in range(50))
    assert per[0][0] == "wing"
    await backend.close()


async def test_partial_failure_on_a_real_cluster(
    real_index: str, proxy: tuple[StandIn, str]
) -> None:
    standin, url = proxy
    standin.fail_status = lambda bodies: 503 if any(_text(b) == "pasta" for b in bodies) else None
    backend = ElasticBackend(make_client(url), real_index)
    run = RetrievalRun(backend, [SubQuery.match(w) for w in ("wing", "pasta")], k=3, n_chunks=2)
    _ = [c async for c in run.stream()]
    assert [p.origins for p in run.report.lost] == [(1,)]
    assert "wing" in {h.doc_id for h in run.candidates()}
    await backend.close()


async def test_chunks_stream_in_completion_order(
    real_index: str, proxy: tuple[StandIn, str]
) -> None:
    standin, url = proxy
    standin.delay = lambda bodies: 0.4 if any(_text(b) == "wing" for b in bodies) else 0.0
    backend = ElasticBackend(make_client(url), real_index)
    run = RetrievalRun(backend, [SubQuery.match(w) for w in ("wing", "heat")], k=3, n_chunks=2)
    t0 = time.perf_counter()
    arrivals = [(c.chunk, time.perf_counter() - t0) async for c in run.stream()]
    assert [c for c, _ in arrivals] == [1, 0]  # the fast chunk is usable first
    assert arrivals[0][1] < 0.3 <= arrivals[1][1]
    await backend.close()
