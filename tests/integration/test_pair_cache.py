"""The cross-encoder score cache, end to end on a MiniLM-L6 cross-encoder built here
(int8, as served): a repeated (query, document) is answered without the model, with the
same score; lookups and evictions show in ``/metrics``; work that finishes after its
request answered still fills the cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from app.metrics import Metrics
from app.services import open_engine
from rerank.cache import PairCache
from rerank.cold import score_cold
from rerank.model import ModelKind
from rerank.scorer import QueryScorer
from rerank.types import Doc
from tests.integration.test_metrics import moved, scrape
from tests.support import MakeApp

QUERY = "pressure distribution on a wing at supersonic speed"
DOCS = [
    "Experiments on the lift increase of a wing immersed in a propeller slipstream.",
    "Laminar boundary layer thickness grows with the square root of distance.",
    "Stagnation point heat transfer to blunt bodies in hypersonic flow.",
    "Boil the pasta, simmer tomatoes with garlic and basil.",
    "Flutter of flat panels exposed to supersonic flow.",
]


@pytest.fixture
async def cross(make_app: MakeApp, minilm_cross_dir: Path) -> AsyncIterator[TestClient]:
    cfg = Config().override(model_dir=minilm_cross_dir, max_length=128, cache_mb=0.01)
    metrics = Metrics()
    engine = open_engine(cfg, observer=metrics)
    assert engine.kind is ModelKind.CROSS_ENCODER and engine.precision == "int8"
    try:
        yield await make_app(config=cfg, engine_=engine, metrics=metrics)
    finally:
        engine.close()


async def rerank(client: TestClient, query: str, docs: list[str]) -> list[float]:
    resp = await client.post("/v1/rerank", data=orjson.dumps({"query": query, "documents": docs}))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]


async def test_a_repeated_pair_is_answered_from_the_cache_with_the_same_score(
    cross: TestClient,
) -> None:
    s0 = await scrape(cross)
    first = await rerank(cross, QUERY, DOCS)
    s1 = await scrape(cross)
    assert moved(s0, s1, "rerank_pair_cache_lookups_total", result="miss") == len(DOCS)
    assert moved(s0, s1, "rerank_pair_cache_lookups_total", result="hit") == 0
    # Three of the documents again, with two new ones: only the new ones reach the model.
    again = await rerank(cross, QUERY, [DOCS[2], "A brand new text on shock waves.", *DOCS[:2]])
    s2 = await scrape(cross)
    assert moved(s1, s2, "rerank_pair_cache_lookups_total", result="hit") == 3
    assert moved(s1, s2, "rerank_pair_cache_lookups_total", result="miss") == 1
    assert again[0] == first[2] and again[2:] == first[:2]
    # All from the cache: the model does not run at all.
    before = moved(s0, s2, "rerank_tokens_total", kind="real")
    assert await rerank(cross, QUERY, DOCS) == first
    s3 = await scrape(cross)
    assert moved(s0, s3, "rerank_tokens_total", kind="real") == before
    # Another query is another pair.
    await rerank(cross, "heat transfer", DOCS[:2])
    s4 = await scrape(cross)
    assert moved(s3, s4, "rerank_pair_cache_lookups_total", result="miss") == 2


async def test_the_cache_is_bounded_and_counts_evictions(cross: TestClient) -> None:
    # cache_mb=0.01: room for 64 pairs; 80 new documents evict at least 16.
    s0 = await scrape(cross)
    for start in range(0, 80, 20):
        await rerank(
            cross, QUERY, [f"document {i} on wing flutter" for i in range(start, start + 20)]
        )
    s1 = await scrape(cross)
    evicted = moved(s0, s1, "rerank_cache_evictions_total", cache="pair")
    assert evicted >= 16


def test_pair_cache_is_an_lru_bounded_in_bytes() -> None:
    evicted: list[int] = []
    c = PairCache(3 * 163, "tag", evicted.append)
    keys = [c.key("q", f"doc {i}") for i in range(4)]
    for i, k in enumerate(keys[:3]):
        c.put(k, float(i))
    assert c.get(keys[0]) == 0.0  # used: now the most recent
    c.put(keys[3], 3.0)
    assert c.get(keys[1]) is None and c.get(keys[0]) == 0.0 and len(c) == 3
    assert c.evictions == 1 and evicted == [1] and c.nbytes <= c.max_bytes
    # What decides a score is in the key: the model's tag, the query, the text.
    other = PairCache(1 << 20, "other-model")
    assert len({c.key("q", "t"), c.key("q2", "t"), c.key("q", "t2"), other.key("q", "t")}) == 4
    assert c.key("ab", "c") != PairCache(1, "tag").key("a", "bc")


async def test_scores_finished_after_the_request_left_still_fill_the_cache(
    minilm_cross_dir: Path,
) -> None:
    cfg = Config().override(model_dir=minilm_cross_dir, max_length=128)
    engine = open_engine(cfg)
    try:
        assert engine.pair_cache is not None
        docs = [Doc(str(i), f"late document {i} about supersonic wings") for i in range(6)]
        scorer = QueryScorer(engine, QUERY, time.monotonic() + 30)
        await scorer.submit(docs)
        scorer.release()  # the request answered before any of it ran
        keys = [engine.pair_cache.key(QUERY, d.text) for d in docs]
        give_up = time.monotonic() + 60
        while any(engine.pair_cache.get(k) is None for k in keys):
            assert time.monotonic() < give_up, "late scores never reached the cache"
            await asyncio.sleep(0.05)
        fresh = await score_cold(engine, QUERY, [d.text for d in docs])
        cached = [engine.pair_cache.get(k) for k in keys]
        assert [round(float(s), 5) for s in fresh.scores] == [round(s or 0, 5) for s in cached]
    finally:
        await engine.aclose()
