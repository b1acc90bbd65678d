"""Approximate kNN on real embeddings (issue 25): Cranfield's 1,400 titles embedded by the
default model and its 225 queries. With ``knn_exact_max`` set to 0 through the
configuration, the embedded backend searches through the HNSW index the build saved, finds
what exact kNN finds (recall@20 >= 0.9), and hybrid search through the production app
uses it unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from rerank.engine import ScoringEngine
from retrieval.config import RetrievalConfig
from retrieval.embedded.ann import paths
from retrieval.embedded.index import build_index
from retrieval.embedded.layout import live_dir
from retrieval.factory import ann_config, open_backend, vector_tag
from retrieval.types import Document
from tests.support import MakeApp, embedder

pytestmark = pytest.mark.slow
K = 20


@pytest.fixture(scope="module")
def titles(
    cranfield: Path, engine: ScoringEngine, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("cranfield-titles")
    lines = (cranfield / "corpus.jsonl").read_text().splitlines()
    docs = [Document(d["_id"], d["title"], "") for d in map(json.loads, lines)]
    cfg = RetrievalConfig(index_dir=path, knn_exact_max=0)
    tag = vector_tag(cfg, engine.vector_tag("title_text"))
    assert tag is not None
    build_index(path, docs, progress=False, embed=embedder(engine), tag=tag, ann=ann_config(cfg))
    live = live_dir(path)
    assert live is not None and all(p.is_file() for p in paths(live, tag))  # saved at index time
    return path


def _queries(cranfield: Path) -> list[str]:
    return [json.loads(x)["text"] for x in (cranfield / "queries.jsonl").read_text().splitlines()]


async def test_hnsw_finds_what_exact_knn_finds_on_real_embeddings(
    titles: Path, cranfield: Path, engine: ScoringEngine
) -> None:
    engine_tag = engine.vector_tag("title_text")
    approx = open_backend(RetrievalConfig(index_dir=titles, knn_exact_max=0), engine_tag)
    exact = open_backend(RetrievalConfig(index_dir=titles), engine_tag)
    vectors = engine.embed_documents(_queries(cranfield))
    recalls = []
    for q in vectors:
        got = [h.doc_id for h in await approx.search_knn(q, K)]
        want = [h.doc_id for h in await exact.search_knn(q, K)]
        recalls.append(len(set(got) & set(want)) / K)
    assert len(recalls) == 225 and float(np.mean(recalls)) >= 0.9
    await approx.close()
    await exact.close()


async def test_hybrid_search_goes_through_the_hnsw_index(
    titles: Path, cranfield: Path, engine: ScoringEngine, make_app: MakeApp
) -> None:
    engine_tag = engine.vector_tag("title_text")
    backend = open_backend(RetrievalConfig(index_dir=titles, knn_exact_max=0), engine_tag)
    exact = open_backend(RetrievalConfig(index_dir=titles), engine_tag)
    client = await make_app(backend=backend, hybrid=True, knn_k=K, budget_ms=60_000)
    query = _queries(cranfield)[0]
    resp = await client.post("/v1/search", data=orjson.dumps({"query": query, "size": 10}))
    body = await resp.json()
    assert resp.status == 200 and not body["partial"], body
    want = {h.doc_id for h in await exact.search_knn(engine.embed_documents([query])[0], K)}
    assert len(body["knn"]) == K and len(set(body["knn"]) & want) >= 0.9 * K
    await backend.close()
    await exact.close()
