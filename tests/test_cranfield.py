"""Quality on a real IR collection: /v1/search over Cranfield beats BM25 alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ir_measures
import orjson
import pytest
from ir_measures import nDCG

from app.config import Config
from app.evaluate import read_qrels
from app.server import create_app
from app.services import Services
from rerank.engine import ScoringEngine
from retrieval.corpus import count_lines, read_beir_corpus
from retrieval.embedded import EmbeddedBackend, build_index

pytestmark = pytest.mark.slow


async def test_search_beats_bm25_on_cranfield(
    cranfield: Path, tmp_path: Path, engine: ScoringEngine, aiohttp_client: Any
) -> None:
    index = tmp_path / "cranfield-index"
    build_index(
        index, read_beir_corpus(cranfield), count_lines(cranfield / "corpus.jsonl"), progress=False
    )
    cfg = dataclasses.replace(Config(), budget_ms=600_000)
    client = await aiohttp_client(create_app(cfg, Services(cfg, engine, EmbeddedBackend(index))))
    queries = [orjson.loads(x) for x in (cranfield / "queries.jsonl").read_bytes().splitlines()]
    assert len(queries) == 225
    bm25: list[ir_measures.ScoredDoc] = []
    reranked: list[ir_measures.ScoredDoc] = []
    for q in queries:
        resp = await client.post(
            "/v1/search", data=orjson.dumps({"query": q["text"], "size": 20, "candidates": 20})
        )
        body = await resp.json()
        assert resp.status == 200 and body["scored"] == body["candidates"], body
        hits = body["hits"]
        for rank, h in enumerate(hits):
            bm25.append(ir_measures.ScoredDoc(q["_id"], h["id"], h["retrieval_score"]))
            # The order the endpoint returns, not a score we pick out of it.
            reranked.append(ir_measures.ScoredDoc(q["_id"], h["id"], float(len(hits) - rank)))
    qrels = read_qrels(cranfield)
    base = ir_measures.calc_aggregate([nDCG @ 10], qrels, bm25)[nDCG @ 10]
    ours = ir_measures.calc_aggregate([nDCG @ 10], qrels, reranked)[nDCG @ 10]
    print(f"Cranfield NDCG@10: BM25 {base:.4f}, reranked {ours:.4f}")
    assert ours > base + 0.01
