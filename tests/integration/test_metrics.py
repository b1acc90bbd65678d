"""``GET /metrics`` over a real loopback server: counters and histograms move by exactly what
the requests did (their count, their stage timings, their model batches)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Config
from app.metrics import Metrics
from app.services import open_engine
from app.thread_cpu import TASKS
from rerank.engine import ScoringEngine
from tests.support import MakeApp

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def observed(make_app: MakeApp, default_model_dir: Path) -> AsyncIterator[TestClient]:
    """An app whose engine reports to the app's own registry (as ``open_services`` wires it)."""
    cfg = Config().override(model_dir=default_model_dir, budget_ms=60_000, chunks=4)
    metrics = Metrics()
    engine = open_engine(cfg, observer=metrics)
    try:
        yield await make_app(config=cfg, engine_=engine, metrics=metrics)
    finally:
        engine.close()


async def scrape(client: TestClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    out: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def post(client: TestClient, path: str, payload: Any) -> tuple[int, Any, float]:
    t0 = time.perf_counter()
    resp = await client.post(path, data=orjson.dumps(payload))
    body = await resp.json()
    server_timing = dict(p.strip().split(";dur=") for p in resp.headers["Server-Timing"].split(","))
    body["_client_s"] = time.perf_counter() - t0
    body["_timing_ms"] = {k: float(v) for k, v in server_timing.items()}
    return resp.status, body, body["_client_s"]


SEARCH = "/v1/search"
REQ = "rerank_http_requests_total"
LAT = "rerank_http_request_duration_seconds"
STAGE = "rerank_stage_duration_seconds"


async def test_counters_and_histograms_move_by_what_the_requests_did(
    observed: TestClient,
) -> None:
    before = await scrape(observed)
    searches = [
        {"query": "wing lift in a propeller slipstream"},
        {"query": "heat transfer", "subqueries": ["flutter", "boundary layer", "pasta"]},
        {"query": "supersonic panel flutter", "candidates": 3},
    ]
    bodies = []
    for payload in searches:
        status, body, _ = await post(observed, SEARCH, payload)
        assert status == 200 and body["partial"] is False
        bodies.append(body)
    status, rr, _ = await post(
        observed, "/v1/rerank", {"query": "wing", "documents": ["wing lift", "pasta", "goal"]}
    )
    assert status == 200
    status, _, _ = await post(observed, SEARCH, {"query": ""})
    assert status == 422
    assert (await observed.get("/no/such/path")).status == 404
    after = await scrape(observed)

    post_search = {"endpoint": SEARCH, "method": "POST"}
    assert moved(before, after, REQ, **post_search, status="200") == 3
    assert moved(before, after, LAT + "_count", **post_search, status="200") == 3
    assert moved(before, after, REQ, **post_search, status="422") == 1
    assert moved(before, after, REQ, endpoint="/v1/rerank", method="POST", status="200") == 1
    assert moved(before, after, REQ, endpoint="unmatched", method="GET", status="404") == 1
    # The first scrape counted itself once it had answered; this one is still in flight.
    assert moved(before, after, REQ, endpoint="/metrics", method="GET", status="200") == 1
    assert value(after, "rerank_http_requests_in_flight") == 1

    # The middleware's clock starts before the handler's and stops after it: the sum of the
    # latencies lies between the handlers' own totals and what the client measured.
    lat_sum = moved(before, after, LAT + "_sum", **post_search, status="200")
    assert sum(b["_timing_ms"]["total"] for b in bodies) / 1000 <= lat_sum
    assert lat_sum <= sum(b["_client_s"] for b in bodies)
    # Every 200 search fell in a bucket no higher than +Inf, and at least one at <= 10 s.
    assert moved(before, after, LAT + "_bucket", **post_search, status="200", le="10.0") == 3

    # Stage histograms: one observation per request and stage, summing to Server-Timing.
    assert moved(before, after, STAGE + "_count", stage="retrieve") == 3
    assert moved(before, after, STAGE + "_count", stage="tokenize") == 4
    assert moved(before, after, STAGE + "_count", stage="infer") == 4
    assert moved(before, after, STAGE + "_count", stage="respond") == 4
    assert moved(before, after, STAGE + "_count", stage="ranking") == 3  # searches only
    # From the scores in hand to the response written: part of each request's latency.
    respond = moved(before, after, STAGE + "_sum", stage="respond")
    all_lat = sum(
        moved(before, after, LAT + "_sum", endpoint=e, method="POST", status="200")
        for e in (SEARCH, "/v1/rerank")
    )
    assert 0 < respond < all_lat
    timed = [*bodies, rr]
    for stage, reqs in (("retrieve", bodies), ("tokenize", timed), ("infer", timed)):
        want = sum(b["_timing_ms"][stage] for b in reqs) / 1000
        got = moved(before, after, STAGE + "_sum", stage=stage)
        assert got == pytest.approx(want, abs=len(reqs) * 1e-6), stage

    # Model calls: every query, and every scored document not served by the cache, went
    # through exactly one batch (the cache starts empty: this engine is the test's own).
    cached = sum(b["vectors"]["cache"] for b in bodies)
    items = sum(b["scored"] for b in bodies) + rr["meta"]["scored"] - cached + 4
    assert moved(before, after, "rerank_batch_size_sum") == items
    batches = moved(before, after, "rerank_batch_size_count")
    assert batches >= 4
    assert moved(before, after, "rerank_queue_wait_seconds_count") == items
    assert value(after, STAGE + "_count", stage="queue_wait") == 0  # per call, not per request
    assert moved(before, after, "rerank_batch_padding_ratio_count") == batches
    # Nothing missed its deadline: every model call's time was charged to a request.
    calls = "rerank_model_call_duration_seconds"
    assert moved(before, after, calls + "_count") == batches
    infer = moved(before, after, STAGE + "_sum", stage="infer")
    assert moved(before, after, calls + "_sum") == pytest.approx(infer, rel=1e-9)
    real = moved(before, after, "rerank_tokens_total", kind="real")
    padding = moved(before, after, "rerank_tokens_total", kind="padding")
    assert rr["usage"]["total_tokens"] < real and padding >= 0
    # Disjoint kinds: real + padding is every token computed, which the padding ratio
    # histogram saw batch by batch.
    assert value(after, "rerank_tokens_total", kind="padded") == 0

    # Retrieval: one chunk for a lone query, min(4 unique queries, chunks=4) for the second.
    assert moved(before, after, "rerank_retrieval_chunks_total", backend="embedded") == 1 + 4 + 1
    assert moved(before, after, "rerank_retrieval_lost_parts_total", backend="embedded") == 0
    assert moved(before, after, "rerank_partial_answers_total", endpoint=SEARCH) == 0

    # CPU by thread group: the model ran on the scoring executor, HTTP on the event loop.
    if TASKS.is_dir():
        cpu = "rerank_thread_cpu_seconds_total"
        assert moved(before, after, cpu, thread="scoring") > 0
        assert moved(before, after, cpu, thread="event_loop") > 0


async def test_nothing_retrieved_by_the_deadline_is_a_504_not_a_partial_answer(
    observed: TestClient,
) -> None:
    """A deadline spent before retrieval answered was an empty 200 counted as partial; it
    is now a 504 (issue 12), so no partial answer is counted for it."""
    before = await scrape(observed)
    status, body, _ = await post(
        observed, SEARCH, {"query": "wing flutter heat boundary", "deadline_ms": 0.001}
    )
    assert status == 504 and body["error"]["code"] == "retrieval_timeout"
    after = await scrape(observed)
    assert moved(before, after, "rerank_partial_answers_total", endpoint=SEARCH) == 0


async def test_cache_lookups_are_counted_and_each_app_has_its_own_registry(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    cfg = Config()
    a, b = Metrics(), Metrics()  # two registries in one process: no duplicate-name clash
    client_a = await make_app(config=cfg, engine_=tiny_engine, metrics=a)
    client_b = await make_app(config=cfg, engine_=tiny_engine, metrics=b)
    a.cache(hits=3, misses=1)
    a.cache(hits=2, misses=0)
    await client_a.get("/healthz")
    sa, sb = await scrape(client_a), await scrape(client_b)
    assert value(sa, "rerank_cache_lookups_total", result="hit") == 5
    assert value(sa, "rerank_cache_lookups_total", result="miss") == 1
    assert value(sb, "rerank_cache_lookups_total", result="hit") == 0
    health = {"endpoint": "/healthz", "method": "GET", "status": "200"}
    assert value(sa, REQ, **health) == 1 and value(sb, REQ, **health) == 0


async def test_no_created_series_and_the_build_and_process_are_described(
    observed: TestClient, default_model_dir: Path
) -> None:
    from app import __version__

    assert (
        await observed.post("/v2/rerank", json={"query": "wing", "documents": ["a"]})
    ).status == 200
    resp = await observed.get("/metrics")
    text = await resp.text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert not [n for n in names if n.endswith("_created")]
    samples = await scrape(observed)
    build = {"version": __version__, "model": default_model_dir.name, "precision": "int8"}
    assert value(samples, "rerank_build_info", **build) == 1
    assert sum(1 for name, _ in samples if name == "rerank_build_info") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    # Per request and per model call: separate metrics, separate counts.
    assert value(samples, "rerank_queue_wait_seconds_count") >= 2  # the query and the text
    assert value(samples, REQ, endpoint="/v2/rerank", method="POST", status="200") == 1
