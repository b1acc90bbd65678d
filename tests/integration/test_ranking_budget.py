"""The ranking budget is a ranking budget (issue 22): ``budget_ms`` bounds what ranking adds
once retrieval has answered, retrieval has its own bound, and a caller's end-to-end deadline
caps both. Against the stand-in through the real Elasticsearch client, at a healthy
cluster's latency, and on the embedded index under a burst."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from retrieval.elastic.search import ElasticBackend, make_client
from tests.es_standin import StandIn
from tests.support import MakeApp

INDEX = "docs"
# How late an answer may leave past its budget on a loaded CI machine (the budget itself is
# held to 20 ms by `make bench`, not here).
MARGIN_MS = 250.0
QUERIES = ["wing lift", "heat transfer", "boundary layer", "pasta tomato", "flutter"]


async def _app(make_app: MakeApp, url: str, **cfg: Any) -> TestClient:
    backend = ElasticBackend(make_client(url, timeout_s=5), INDEX, timeout_s=5)
    return await make_app(config=Config().override(**cfg), backend=backend)


async def _search(
    client: TestClient, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any, Any, float]:
    t0 = time.monotonic()
    resp = await client.post("/v1/search", data=orjson.dumps(payload), headers=headers)
    return resp.status, await resp.json(), resp.headers, (time.monotonic() - t0) * 1000


async def test_a_cluster_at_30_ms_answers_with_the_default_budget(
    es_small: tuple[StandIn, str], make_app: MakeApp
) -> None:
    """The row that 504'd on every search: a healthy cluster slower than the budget."""
    standin, url = es_small
    standin.delay = lambda bodies: 0.03
    client = await _app(make_app, url)  # defaults: budget_ms 20, no budget in the request
    for q in QUERIES:
        status, body, headers, _ = await _search(client, {"query": q})
        assert status == 200, body
        timings = body["timings"]
        assert timings["retrieve"] >= 30.0
        # The answer left within the budget of retrieval's answer (plus a loaded machine).
        assert timings["ranking"] <= 20.0 + MARGIN_MS, timings
        assert timings["total"] >= timings["retrieve"]
        assert f"ranking;dur={timings['ranking']}" in headers["Server-Timing"]
        assert body["candidates"] > 0 and body["hits"]


async def test_scoring_gets_its_budget_after_a_slow_retrieval(
    es_small: tuple[StandIn, str], make_app: MakeApp
) -> None:
    """Retrieval takes 300 ms and the budget is 2 s: everything is scored, though the whole
    request took longer than a budget counted from arrival would have allowed ranking."""
    standin, url = es_small
    standin.delay = lambda bodies: 0.3
    client = await _app(make_app, url)
    status, body, _, took = await _search(client, {"query": "wing lift", "budget_ms": 2000})
    assert status == 200, body
    assert body["scored"] == body["candidates"] > 0 and not body["budget_exhausted"]
    assert took >= 300.0


@pytest.mark.parametrize("where", ["body", "header"])
async def test_the_callers_deadline_caps_retrieval(
    es_small: tuple[StandIn, str], make_app: MakeApp, where: str
) -> None:
    standin, url = es_small
    standin.delay = lambda bodies: 2.0
    client = await _app(make_app, url)
    payload: dict[str, Any] = {"query": "wing lift"}
    headers = None
    if where == "body":
        payload["deadline_ms"] = 100
    else:
        headers = {"X-Request-Deadline-Ms": "100"}
    status, body, _, took = await _search(client, payload, headers)
    assert status == 504, body
    assert body["error"]["code"] == "retrieval_timeout"
    assert took < 100 + MARGIN_MS + 500  # not the 2 s the cluster takes


async def test_retrieval_has_its_own_bound(
    es_small: tuple[StandIn, str], make_app: MakeApp
) -> None:
    standin, url = es_small
    standin.delay = lambda bodies: 2.0
    client = await _app(make_app, url, retrieval_timeout_ms=150.0)
    status, body, _, took = await _search(client, {"query": "wing lift", "budget_ms": 5000})
    assert status == 504 and body["error"]["code"] == "retrieval_timeout", body
    assert took < 150 + MARGIN_MS + 500


async def test_a_bad_deadline_header_is_a_422_naming_it(make_app: MakeApp) -> None:
    client = await make_app()
    for raw in ("soon", "0", "-5", "nan", "1e9"):
        status, body, _, _ = await _search(
            client, {"query": "wing"}, {"X-Request-Deadline-Ms": raw}
        )
        assert status == 422, (raw, body)
        assert body["error"]["field"] == "X-Request-Deadline-Ms"


@pytest.mark.parametrize("backend", ["embedded", "cluster at 10 ms"])
async def test_a_burst_gets_answers_not_errors(
    es_small: tuple[StandIn, str], make_app: MakeApp, backend: str
) -> None:
    """20 searches sent at once with no budget given, round after round: late-but-ranked
    answers (partial scoring is fine), never a 504 (11-14 of 20 were, before)."""
    if backend == "embedded":
        client = await make_app()
    else:
        standin, url = es_small
        standin.delay = lambda bodies: 0.01
        client = await _app(make_app, url)
    for r in range(10):
        results = await asyncio.gather(
            *(
                _search(client, {"query": f"{QUERIES[i % 5]} round {r} query {i}"})
                for i in range(20)
            )
        )
        statuses = [status for status, *_ in results]
        if r == 0:  # the bound starts at its ceiling: the first burst is all answered
            assert statuses == [200] * 20, [b for s, b, *_ in results if s != 200][:2]
        # Never a 504. Late (partial) answers lower the adaptive bound, so on a busy host
        # a later burst may be partly shed: only ever as 503 overloaded, with Retry-After.
        shed = [(b, h) for s, b, h, _ in results if s != 200]
        assert all(b["error"]["code"] == "overloaded" and "Retry-After" in h for b, h in shed)
        assert len(shed) < 20, "a whole burst refused"
