"""Issue 25: hybrid retrieval (the query's vector retrieves too) and fusion that a
near-constant retrieval score cannot decide. Embedded index and noida-db (a real
Elasticsearch API), through the production app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.config import Config
from app.services import open_services
from rerank.engine import ScoringEngine
from retrieval.elastic.index import index_documents
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.embedded.index import build_index
from retrieval.embedded.search import EmbeddedBackend
from retrieval.errors import BackendUnavailable, KnnUnavailable, RetrievalError
from retrieval.factory import open_backend, vector_tag
from retrieval.fanout import KnnAsk, RetrievalRun
from retrieval.types import Document, Hit, SubQuery
from tests.support import SMALL_CORPUS, MakeApp, embedder

# No word in common with "heat" (stemmed) or the query below: only a vector finds it.
PARAPHRASE = Document(
    "thermal", "Thermal loads on re-entry capsules", "Warming of a capsule's skin at Mach 20."
)
CORPUS = [*SMALL_CORPUS, PARAPHRASE]


@pytest.fixture(scope="module")
def hybrid_index(engine: ScoringEngine, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hybrid-index")
    build_index(path, CORPUS, progress=False, embed=embedder(engine), tag=tag)
    return path


async def _search(client: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/search", data=orjson.dumps(body))
    return resp.status, await resp.json()


async def test_embedded_knn_is_exact_and_returns_the_stored_vectors(
    engine: ScoringEngine, tag: str, hybrid_index: Path
) -> None:
    backend = EmbeddedBackend(hybrid_index, tag)
    q = engine.embed_documents(["spacecraft skin temperature during atmospheric entry"])[0]
    hits = await backend.search_knn(q, 3)
    vecs = embedder(engine)(CORPUS)
    cos = vecs @ q / np.linalg.norm(vecs, axis=1)
    want = [CORPUS[i].doc_id for i in np.argsort(-cos)[:3]]
    assert [h.doc_id for h in hits] == want
    assert [h.score for h in hits] == pytest.approx(sorted(cos, reverse=True)[:3], abs=2e-3)
    assert all(h.vector is not None and h.title for h in hits)
    await backend.close()


async def test_knn_needs_vectors_carrying_the_tag(small_index: Path, tag: str) -> None:
    for backend in (EmbeddedBackend(small_index, tag), EmbeddedBackend(small_index, None)):
        with pytest.raises(KnnUnavailable, match="kNN"):
            await backend.check_knn()
        await backend.close()


async def test_hybrid_search_adds_what_only_the_vector_finds(
    make_app: MakeApp, engine: ScoringEngine, tag: str, hybrid_index: Path
) -> None:
    backend = EmbeddedBackend(hybrid_index, tag)
    client = await make_app(backend=backend, hybrid=True, knn_k=3, budget_ms=60_000)
    query = "heat of spacecraft entering the atmosphere"
    status, body = await _search(client, {"query": query, "size": 10})
    assert status == 200, body
    hits = {h["id"]: h for h in body["hits"]}
    assert "thermal" in body["knn"] and "thermal" in hits  # BM25 alone cannot find it
    assert hits["thermal"]["retrieval_score"] == 0.0
    assert hits["thermal"]["similarity"] == pytest.approx(hits["thermal"]["model_score"], abs=2e-3)
    assert hits["heat"]["retrieval_score"] > 0  # found by both: both scores kept
    assert "knn" in body["timings"] and not body["partial"]
    assert body["scored"] == body["candidates"] == len(hits)

    # The same service without hybrid per request, and a kNN-only search.
    status, lexical = await _search(client, {"query": query, "size": 10, "hybrid": False})
    assert status == 200 and "thermal" not in {h["id"] for h in lexical["hits"]}
    assert lexical["knn"] is None
    status, knn_only = await _search(client, {"query": query, "match_query": False})
    assert status == 200, knn_only
    assert [h["id"] for h in knn_only["hits"]] == body["knn"]
    await backend.close()


async def test_hybrid_per_request_on_a_service_started_without_it(
    make_app: MakeApp, engine: ScoringEngine, tag: str, hybrid_index: Path, small_index: Path
) -> None:
    query = "heat of spacecraft entering the atmosphere"
    # Vectors in the index: asking per request is enough.
    backend = EmbeddedBackend(hybrid_index, tag)
    client = await make_app(backend=backend, knn_k=3, budget_ms=60_000)
    status, body = await _search(client, {"query": query, "size": 10, "hybrid": True})
    assert status == 200 and "thermal" in body["knn"] and not body["partial"], body
    await backend.close()
    # No vectors: the kNN part is lost and named; the lexical answer stands.
    backend = EmbeddedBackend(small_index, tag)
    client = await make_app(backend=backend, budget_ms=60_000)
    status, body = await _search(client, {"query": query, "hybrid": True})
    assert status == 200 and body["partial"] and body["hits"], body
    assert [p["knn"] for p in body["lost"]] == [True]
    assert "python -m app embed" in body["lost"][0]["error"]
    # With nothing else to retrieve with: a 409 naming the cause, never an empty 200.
    status, body = await _search(client, {"query": query, "hybrid": True, "match_query": False})
    assert status == 409 and body["error"]["field"] == "hybrid", body
    assert "python -m app embed" in body["error"]["message"]
    await backend.close()


async def test_hybrid_start_up_without_vectors_is_a_setup_error(
    default_model_dir: Path, small_index: Path
) -> None:
    cfg = Config().override(model_dir=default_model_dir, index_dir=small_index, hybrid=True)
    with pytest.raises(KnnUnavailable, match="python -m app embed"):
        await open_services(cfg)


class _Lexical:
    """The small embedded index for lexical chunks; a kNN part that fails as asked."""

    name = "fake"

    def __init__(self, inner: EmbeddedBackend, knn: list[Hit] | RetrievalError) -> None:
        self.inner, self.knn = inner, knn

    async def search_chunk(self, queries: Any, k: Any, deadline: Any = None) -> Any:
        return await self.inner.search_chunk(queries, k)

    def queue_age(self) -> float:
        return 0.0

    async def search_knn(self, vector: Any, k: int, deadline: Any = None) -> list[Hit]:
        if isinstance(self.knn, RetrievalError):
            raise self.knn
        return self.knn[:k]


async def _vector() -> np.ndarray:
    return np.ones(4, np.float32)


async def _no_vector() -> None:
    return None


async def test_fanout_keeps_both_scores_and_reports_a_lost_knn_part(
    small_backend: EmbeddedBackend,
) -> None:
    knn = [Hit("heat", "t", "x", 0.9), Hit("elsewhere", "t", "y", 0.5)]
    run = RetrievalRun(
        _Lexical(small_backend, knn),  # type: ignore[arg-type]
        [SubQuery.match("heat transfer")],
        5,
        1,
        knn=KnnAsk(_vector, 2),
    )
    chunks = [c async for c in run.stream()]
    assert [c.extra for c in chunks] == [False, True] or [c.extra for c in chunks] == [True, False]
    best = {h.doc_id: h for h in run.candidates()}
    assert best["heat"].score > 0 and best["heat"].similarity == 0.9
    assert best["elsewhere"].score == 0.0 and best["elsewhere"].similarity == 0.5
    assert run.report.knn_ids == ["heat", "elsewhere"]

    # No query vector: the kNN part is lost (and said so), the lexical hits answer.
    run = RetrievalRun(
        _Lexical(small_backend, knn),  # type: ignore[arg-type]
        [SubQuery.match("heat transfer")],
        5,
        1,
        knn=KnnAsk(_no_vector, 2),
    )
    _ = [c async for c in run.stream()]
    assert [p.knn for p in run.report.lost] == [True] and run.candidates()

    # kNN alone, and it fails: an error, never an empty answer.
    run = RetrievalRun(
        _Lexical(small_backend, BackendUnavailable("down")),  # type: ignore[arg-type]
        [],
        5,
        1,
        knn=KnnAsk(_vector, 2),
    )
    with pytest.raises(BackendUnavailable):
        _ = [c async for c in run.stream()]


# Issue 25's case: a team's bool query (a word every document has, plus a filter) with
# match_query false. BM25 differs only by document length (a third of its top at most);
# the model tells the documents apart.
SIX = [
    ("hyper", "Heat transfer to a flat plate in hypersonic flow",
     "Measured heat transfer rates to a sharp flat plate at Mach 7 in a shock tunnel."),
    ("poetry", "Notes on medieval French poetry", "The heat of summer in troubadour songs."),
    ("bread", "Baking bread at home", "Bake the loaf with dry heat until the crust is brown."),
    ("debate", "A parliamentary debate", "The heat of the debate rose over the budget vote."),
    ("pump", "Pumps for houses", "A pump moves heat from the outdoor air into a house."),
    ("city", "Summer in the city", "Heat waves make city streets hotter than the countryside."),
]  # fmt: skip
MAPPING = {
    "properties": {
        "headline": {"type": "text", "analyzer": "english"},
        "body": {"type": "text", "analyzer": "english"},
        "lang": {"type": "keyword"},
    }
}


async def test_a_near_constant_retrieval_score_does_not_decide_the_order(
    noida_url: str, noida_index: str, make_app: MakeApp, engine: ScoringEngine
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        await es.indices.create(index=noida_index, mappings=MAPPING)
        for doc_id, title, text in SIX:
            src = {"headline": title, "body": text, "lang": "en"}
            await es.index(index=noida_index, id=doc_id, document=src)
        await es.indices.refresh(index=noida_index)
        cfg = Config().override(
            es_url=noida_url, es_index=noida_index, es_title_field="headline",
            es_text_field="body", budget_ms=60_000,
        )  # fmt: skip
        backend = open_backend(cfg.retrieval_config(), None)
        client = await make_app(backend=backend, config=cfg)
        team_query = {
            "bool": {"must": [{"match": {"body": "heat"}}], "filter": [{"term": {"lang": "en"}}]}
        }
        request = {
            "query": "heat transfer in hypersonic flow",
            "match_query": False,
            "subqueries": [{"query": team_query}],
        }
        status, body = await _search(client, request)
        assert status == 200, body
        scores = [h["retrieval_score"] for h in body["hits"]]
        assert len(scores) == 6 and max(scores) - min(scores) < 0.4 * max(scores), scores
        assert body["hits"][0]["id"] == "hyper", body["hits"]
        # The old default stretched that spread over [0, 1] and let it outvote the model.
        status, old = await _search(client, {**request, "fusion": "minmax"})
        assert status == 200 and old["hits"][0]["id"] != "hyper"
        # A constant retrieval score (a filter alone) leaves the model's order.
        only_filter = {**request, "subqueries": [{"query": {"term": {"lang": "en"}}}]}
        status, flat = await _search(client, only_filter)
        ranked = sorted(flat["hits"], key=lambda h: -h["model_score"])
        assert [h["id"] for h in flat["hits"]] == [h["id"] for h in ranked]
        await backend.close()
    finally:
        await es.close()


async def test_elasticsearch_hybrid_searches_the_indexed_dense_vector(
    noida_url: str, noida_index: str, make_app: MakeApp, engine: ScoringEngine, tag: str
) -> None:
    cfg = Config().override(es_url=noida_url, es_index=noida_index, budget_ms=60_000, hybrid=True)
    stored = vector_tag(cfg.retrieval_config(), tag)  # what `app index` stores: fields named
    assert stored is not None
    es = make_client(noida_url, timeout_s=30)
    try:
        embed = embedder(engine)
        dims = embed(CORPUS[:1]).shape[1]
        async for _ in index_documents(es, noida_index, CORPUS, embed=embed, tag=stored, dims=dims):
            pass
        await es.indices.refresh(index=noida_index)
    finally:
        await es.close()
    backend = open_backend(cfg.retrieval_config(), engine.vector_tag("title_text"))
    try:
        await backend.check_knn()
        client = await make_app(backend=backend, config=cfg, knn_k=3)
        status, body = await _search(
            client, {"query": "heat of spacecraft entering the atmosphere", "size": 10}
        )
    finally:
        await backend.close()
    assert status == 200, body
    hits = {h["id"]: h for h in body["hits"]}
    assert "thermal" in body["knn"] and hits["thermal"]["retrieval_score"] == 0.0
    # ES reports (1 + cos) / 2; the service speaks cosine, as the model does.
    assert hits["thermal"]["similarity"] == pytest.approx(hits["thermal"]["model_score"], abs=5e-3)


async def test_elasticsearch_without_an_indexed_vector_field_is_named(
    noida_url: str, noida_index: str
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        await es.indices.create(index=noida_index, mappings=MAPPING)
        backend = ElasticBackend(es, noida_index, vector_tag="x")
        with pytest.raises(KnnUnavailable, match="dense_vector"):
            await backend.check_knn()
    finally:
        await es.close()
