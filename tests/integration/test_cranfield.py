"""Quality on a real IR collection: /v1/search over Cranfield beats BM25 alone."""

from __future__ import annotations

from pathlib import Path

import ir_measures
import orjson
import pytest
from ir_measures import nDCG

from app.config import Config
from app.evaluate import read_qrels
from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from retrieval.corpus import count_lines, read_beir_corpus
from retrieval.embedded.index import build_index
from retrieval.embedded.search import EmbeddedBackend
from tests.support import MakeApp

pytestmark = pytest.mark.slow


async def test_search_beats_bm25_on_cranfield(
    cranfield: Path, tmp_path: Path, make_app: MakeApp
) -> None:
    index = tmp_path / "cranfield-index"
    build_index(
        index, read_beir_corpus(cranfield), count_lines(cranfield / "corpus.jsonl"), progress=False
    )
    cfg = Config().override(budget_ms=600_000)
    client = await make_app(config=cfg, backend=EmbeddedBackend(index))
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


async def test_int8_scores_agree_with_fp32_on_cranfield_pairs(
    cranfield: Path, tmp_path: Path, engine: ScoringEngine, default_model_dir: Path
) -> None:
    """Quantisation must not reorder candidates: Spearman >= 0.99 against fp32 on real pairs."""
    import numpy as np

    from rerank.text import doc_text
    from retrieval.types import SubQuery

    index = tmp_path / "cranfield-index"
    build_index(index, read_beir_corpus(cranfield), progress=False)
    backend = EmbeddedBackend(index)
    int8 = ScoringEngine(
        EngineConfig(model_dir=default_model_dir, max_length=256, precision="int8")
    )
    queries = [orjson.loads(x) for x in (cranfield / "queries.jsonl").read_bytes().splitlines()]
    a32, a8 = [], []
    try:
        for q in queries[:40]:
            (hits,) = await backend.search_chunk([SubQuery.match(q["text"])], 20)
            assert isinstance(hits, list)
            texts = [doc_text(h) for h in hits]
            a32.append((await score_cold(engine, q["text"], texts)).scores)
            a8.append((await score_cold(int8, q["text"], texts)).scores)
    finally:
        await int8.aclose()
        await backend.close()
    x, y = np.concatenate(a32), np.concatenate(a8)
    rx, ry = (np.argsort(np.argsort(v)).astype(np.float64) for v in (x, y))
    rho = float(np.corrcoef(rx, ry)[0, 1])
    print(f"int8 vs fp32 on {len(x)} Cranfield pairs: Spearman {rho:.4f}")
    assert len(x) >= 700 and rho >= 0.99
