"""Issue 22 part 2: stored vectors are used only by the configuration that would write the
same ones: model, precision, max length, doc-fields mode *and the source fields*. Against
noida-db, through the production wiring (``open_backend``, ``app embed``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch

from app import indexing
from app.config import Config
from rerank.engine import ScoringEngine
from retrieval.elastic.search import make_client
from retrieval.factory import open_backend, vector_tag
from retrieval.vectors import stored_tag
from tests.support import SMALL_CORPUS, MakeApp

MAPPING = {
    "properties": {
        "headline": {"type": "text", "analyzer": "english"},
        "body": {"type": "text", "analyzer": "english"},
        "lang": {"type": "keyword"},
    }
}


async def _team_index(es: AsyncElasticsearch, index: str) -> None:
    await es.indices.create(index=index, mappings=MAPPING)
    for d in SMALL_CORPUS:
        src = {"headline": d.title, "body": d.text, "lang": "en"}
        await es.index(index=index, id=d.doc_id, document=src)
    await es.indices.refresh(index=index)


def _config(url: str, index: str, model_dir: Path, text_field: str) -> Config:
    # The session ``engine``'s settings, so that its tag is the one `embed` writes.
    return Config().override(
        es_url=url,
        es_index=index,
        es_title_field="headline",
        es_text_field=text_field,
        model_dir=model_dir,
        precision="fp32",
        max_length=256,
    )


async def _search(make_app: MakeApp, cfg: Config, engine: ScoringEngine) -> dict[str, Any]:
    backend = open_backend(cfg.retrieval_config(), engine.vector_tag("title_text"))
    client = await make_app(backend=backend, config=cfg, budget_ms=60_000)
    resp = await client.post("/v1/search", data=orjson.dumps({"query": "wing lift", "size": 6}))
    body = await resp.json()
    await backend.close()
    assert resp.status == 200, body
    return dict(body)


async def test_vectors_from_another_text_field_are_not_used_and_embed_redoes_them(
    noida_url: str,
    noida_index: str,
    default_model_dir: Path,
    engine: ScoringEngine,
    make_app: MakeApp,
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        await _team_index(es, noida_index)
        from_body = _config(noida_url, noida_index, default_model_dir, "body")
        assert await asyncio.to_thread(indexing.embed, from_body, 4, None) == 0
        body_tag = vector_tag(from_body.retrieval_config(), engine.vector_tag("title_text"))
        assert body_tag == stored_tag(str(engine.vector_tag("title_text")), ("headline", "body"))
        got = await _search(make_app, from_body, engine)
        assert got["vectors"]["index"] == got["scored"] > 0  # its own vectors: used

        # Restart reading the headline as the text: the body's vectors must not be used.
        from_headline = _config(noida_url, noida_index, default_model_dir, "headline")
        stale = await _search(make_app, from_headline, engine)
        assert stale["vectors"]["index"] == 0
        scores = {h["id"]: h["model_score"] for h in got["hits"]}
        moved = [h for h in stale["hits"] if h["model_score"] != scores.get(h["id"])]
        assert moved, "scores from the headline must differ from the body's"

        # `embed` with the new fields re-embeds every document (none counts as tagged) ...
        assert await asyncio.to_thread(indexing.embed, from_headline, 4, None) == 0
        sources = [(await es.get(index=noida_index, id=d.doc_id))["_source"] for d in SMALL_CORPUS]
        new_tag = vector_tag(from_headline.retrieval_config(), engine.vector_tag("title_text"))
        assert {s["embedding_tag"] for s in sources} == {new_tag} != {body_tag}
        # ... and the vectors then used give the scores computed from the text.
        fresh = await _search(make_app, from_headline, engine)
        assert fresh["vectors"]["index"] == fresh["scored"] > 0
        for hit, was in zip(fresh["hits"], stale["hits"], strict=True):
            assert hit["id"] == was["id"]
            assert abs(hit["model_score"] - was["model_score"]) < 5e-3  # float16 storage
    finally:
        await es.close()
