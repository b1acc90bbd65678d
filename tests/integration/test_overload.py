"""Overload (issue 27, row 3): the admission bound adapts to late answers so the excess is
refused at once (503 + Retry-After) instead of admitted to fail, and repeated error lines
are rate-limited and counted on /metrics."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from pathlib import Path

import orjson

from app.admission import BACKOFF_S, FLOOR, AdaptiveLimit
from app.logs import SUPPRESSED, RateLimitFilter, make_handler
from rerank.engine import ScoringEngine
from retrieval.embedded.search import EmbeddedBackend
from tests.support import MakeApp


def test_the_bound_falls_on_late_answers_once_per_burst_and_climbs_back() -> None:
    bound = AdaptiveLimit(64)
    assert bound.current == 64
    for _ in range(50):  # a burst of late answers: one cut, not fifty
        bound.late()
    assert bound.current == 51
    bound.decreased_at -= 1.0  # the next burst, a while later
    bound.late()
    assert bound.current == 40
    for _ in range(1_000):  # complete answers right after a late one: the bound holds
        bound.on_time()
    assert bound.current == 40
    bound.late_at -= 1.0  # none late for a while: it climbs
    for _ in range(10_000):
        bound.on_time()
    assert bound.current == 64  # never past the ceiling
    for _ in range(100):
        bound.decreased_at -= 1.0
        bound.late()
    assert bound.current == FLOOR  # never below the floor


def _limit(text: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith("rerank_admission_limit "))
    return float(line.split()[1])


async def test_late_searches_lower_the_bound_and_the_excess_gets_503(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    client = await make_app(engine_=tiny_engine, max_in_flight=4)
    assert _limit(await (await client.get("/metrics")).text()) == 4
    late = {"query": "wing", "deadline_ms": 0.001}  # nothing can be retrieved in time
    resp = await client.post("/v1/search", data=orjson.dumps(late))
    assert resp.status == 504
    assert _limit(await (await client.get("/metrics")).text()) == 3  # 4 x 0.8
    on_time = {"query": "wing", "budget_ms": 60_000}
    assert (await client.post("/v1/search", data=orjson.dumps(on_time))).status == 200
    assert _limit(await (await client.get("/metrics")).text()) == 3  # held right after
    await asyncio.sleep(BACKOFF_S)
    for _ in range(20):
        assert (await client.post("/v1/search", data=orjson.dumps(on_time))).status == 200
    assert _limit(await (await client.get("/metrics")).text()) == 4


RERANKS = {
    "/v1/rerank": {"query": "wing", "documents": ["wing flow", "heat plate"]},
    "/v2/rerank": {"query": "wing", "documents": ["wing flow", "heat plate"]},
    "/rerank": {"query": "wing", "texts": ["wing flow", "heat plate"]},
}


async def test_late_reranks_lower_the_bound_and_complete_ones_raise_it(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    """The rerank routes share the scoring queue with search: their answers move the bound
    too. A budget that cut scoring (a partial 200) cuts it; a complete answer adds to it."""
    client = await make_app(engine_=tiny_engine, max_in_flight=4)
    app_bound = 4.0
    for path, body in RERANKS.items():
        late = {"X-Rerank-Budget-Ms": "0.001"}  # nothing can be scored in time
        resp = await client.post(path, data=orjson.dumps(body), headers=late)
        assert resp.status == 200, await resp.text()
        app_bound = max(FLOOR, app_bound * 0.8)
        assert _limit(await (await client.get("/metrics")).text()) == int(app_bound), path
        await asyncio.sleep(BACKOFF_S)  # the next cut is not held back by the last one
    for _ in range(20):
        for path, body in RERANKS.items():
            assert (await client.post(path, data=orjson.dumps(body))).status == 200
    assert _limit(await (await client.get("/metrics")).text()) == 4


async def test_a_rerank_over_the_servers_time_limit_lowers_the_bound(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    client = await make_app(engine_=tiny_engine, max_in_flight=4, rerank_max_ms=0.001)
    body = {"query": "wing", "documents": [f"doc {i} wing" for i in range(50)]}
    resp = await client.post("/v1/rerank", data=orjson.dumps(body))
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "over_time_limit"
    assert _limit(await (await client.get("/metrics")).text()) == 3


async def test_a_search_over_the_bound_is_refused_at_once(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    from app.http import IN_FLIGHT

    client = await make_app(engine_=tiny_engine, max_in_flight=2)
    client.app[IN_FLIGHT].scoring = 2  # two searches in flight
    resp = await client.post("/v1/search", data=orjson.dumps({"query": "wing"}))
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "overloaded"
    assert resp.headers["Retry-After"] == "1"
    client.app[IN_FLIGHT].scoring = 0


def test_repeated_error_lines_are_rate_limited_and_counted() -> None:
    out = io.StringIO()
    handler = make_handler("json", out)
    log = logging.getLogger("app.test_overload")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    before = SUPPRESSED[("app.test_overload", "ERROR")]
    try:
        for _ in range(1000):
            log.error("%s on %s: %s", "retrieval_timeout", "/v1/search", "nothing in time")
        log.error("%s on %s: %s", "retrieval_failed", "/v1/search", "other code: its own lines")
        log.info("info lines are never held back")
    finally:
        log.removeHandler(handler)
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    timeouts = [x for x in lines if "retrieval_timeout" in x["msg"]]
    assert len(timeouts) == RateLimitFilter.BURST
    assert sum("retrieval_failed" in x["msg"] for x in lines) == 1
    assert any(x["level"] == "INFO" for x in lines)
    assert SUPPRESSED[("app.test_overload", "ERROR")] - before == 1000 - RateLimitFilter.BURST


async def test_suppressed_lines_are_on_metrics(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    SUPPRESSED[("app.test_overload", "ERROR")] += 0  # present even at zero
    client = await make_app(engine_=tiny_engine)
    text = await (await client.get("/metrics")).text()
    assert 'rerank_log_lines_suppressed_total{level="ERROR",logger="app.test_overload"}' in text


def _shed(text: str, reason: str) -> float:
    line = next(
        ln for ln in text.splitlines() if f'rerank_admission_shed_total{{reason="{reason}"}}' in ln
    )
    return float(line.split()[1])


async def test_a_standing_search_queue_sheds_searches_at_once(
    make_app: MakeApp, tiny_engine: ScoringEngine, small_index: Path
) -> None:
    """Searches queued behind a busy search thread come back complete, so the bound never
    fell: at 2x the sustainable rate 151 req/s were let in and each waited ~0.4 s (goodput
    0.4 req/s). Now a queue that stands over the target for the interval sheds the next
    search at once (503 + Retry-After, well under the bound), reranks still pass (they
    do not use that thread), and once it drains, searches are let in again."""
    backend = EmbeddedBackend(small_index)
    gate = threading.Event()
    try:
        client = await make_app(
            engine_=tiny_engine, backend=backend, queue_target_ms=10, queue_interval_ms=50
        )
        backend._executor.submit(gate.wait, 10)  # the search thread is busy
        held = [
            asyncio.ensure_future(client.post("/v1/search", data=orjson.dumps({"query": q})))
            for q in ("wing", "heat")
        ]
        await asyncio.sleep(0.2)  # the held ones wait over target + interval
        assert backend.queue_age() > 0.1  # over target + interval (60 ms)
        assert sum(not t.done() for t in held) == 2
        t0 = time.monotonic()
        resp = await client.post("/v1/search", data=orjson.dumps({"query": "flow"}))
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "overloaded"
        assert resp.headers["Retry-After"] == "1"
        assert time.monotonic() - t0 < 0.5  # at once, not after the queue
        metrics = await (await client.get("/metrics")).text()
        assert _shed(metrics, "standing_queue") == 1
        assert _limit(metrics) == 64  # the shared bound (reranks use it too) is not cut
        assert 'rerank_local_queue_wait_seconds{queue="search_thread"}' in metrics
        rerank = {"query": "wing", "documents": ["wing flow", "heat plate"]}
        assert (await client.post("/v1/rerank", data=orjson.dumps(rerank))).status == 200
        gate.set()
        for t in held:  # the admitted ones are answered, complete
            assert (await t).status == 200
        resp = await client.post("/v1/search", data=orjson.dumps({"query": "flow"}))
        assert resp.status == 200, await resp.text()
    finally:
        gate.set()
        await backend.close()
