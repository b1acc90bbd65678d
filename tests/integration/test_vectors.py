"""Index-time document vectors: stored with the documents (tantivy, Elasticsearch through
the stand-in), used only when their tag matches the engine, and end to end over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from app.config import Config
from rerank.engine import ScoringEngine
from retrieval.elastic.index import index_documents
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.embedded.index import build_index
from retrieval.embedded.search import EmbeddedBackend
from retrieval.types import SubQuery
from tests.es_standin import StandIn
from tests.support import SMALL_CORPUS, MakeApp, embedder


@pytest.fixture(scope="module")
def vector_index(engine: ScoringEngine, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vec-index")
    build_index(path, SMALL_CORPUS, progress=False, embed=embedder(engine), tag=tag)
    return path


def test_tag_names_model_precision_length_and_fields(engine: ScoringEngine) -> None:
    a, b = engine.vector_tag("title_text"), engine.vector_tag("text")
    assert a is not None and b is not None and a != b
    assert ":fp32:256:" in a


async def test_embedded_index_returns_vectors_only_for_a_matching_tag(
    engine: ScoringEngine, vector_index: Path, tag: str, small_index: Path
) -> None:
    want = dict(zip([d.doc_id for d in SMALL_CORPUS], embedder(engine)(SMALL_CORPUS), strict=True))
    for backend_tag, index, expect in (
        (tag, vector_index, True),
        ("other-model", vector_index, False),
        (None, vector_index, False),
        (tag, small_index, False),  # built without vectors
    ):
        backend = EmbeddedBackend(index, backend_tag)
        (hits,) = await backend.search_chunk([SubQuery.match("wing flow")], 5)
        assert not isinstance(hits, Exception) and hits
        for h in hits:
            if expect:
                assert h.vector is not None
                np.testing.assert_allclose(h.vector, want[h.doc_id], atol=2e-3)  # float16
            else:
                assert h.vector is None
        await backend.close()


async def test_elasticsearch_stores_and_returns_tagged_vectors(
    engine: ScoringEngine, tag: str, es_standin: tuple[StandIn, str]
) -> None:
    standin, url = es_standin
    client = make_client(url, timeout_s=10)
    async for _ in index_documents(
        client, "vec", SMALL_CORPUS, embed=embedder(engine), tag=tag, dims=384
    ):
        pass
    stored = standin.docs["vec"]["wing"]
    assert len(stored["embedding"]) == 384 and stored["embedding_tag"] == tag
    backend = ElasticBackend(client, "vec", vector_tag=tag)
    (hits,) = await backend.search_chunk([SubQuery.match("wing slipstream")], 3)
    assert not isinstance(hits, Exception)
    assert all(h.vector is not None and h.vector.shape == (384,) for h in hits)
    (body,) = standin.msearch_calls[-1]
    assert "embedding" not in body["_source"]  # the compact float16 copy, not JSON floats
    plain = ElasticBackend(client, "vec")
    (hits,) = await plain.search_chunk([SubQuery.match("wing slipstream")], 3)
    assert not isinstance(hits, Exception) and all(h.vector is None for h in hits)
    await backend.close()


async def test_search_with_index_vectors_encodes_only_the_query(
    make_app: MakeApp,
    vector_index: Path,
    tag: str,
    small_backend: EmbeddedBackend,
) -> None:
    cfg = Config().override(budget_ms=60_000, precision="fp32")
    bodies = []
    for backend in (EmbeddedBackend(vector_index, tag), small_backend):
        client = await make_app(config=cfg, backend=backend)
        payload = {"query": "wing flow heat boundary plate", "candidates": 5, "size": 5}
        resp = await client.post("/v1/search", data=orjson.dumps(payload))
        assert resp.status == 200
        bodies.append(await resp.json())
    with_vectors, without = bodies
    n = with_vectors["candidates"]
    assert with_vectors["vectors"]["index"] == with_vectors["scored"] == n >= 3
    assert without["vectors"]["index"] == 0
    assert [h["id"] for h in with_vectors["hits"]] == [h["id"] for h in without["hits"]]
    for a, b in zip(with_vectors["hits"], without["hits"], strict=True):
        assert a["model_score"] == pytest.approx(b["model_score"], abs=2e-3)
