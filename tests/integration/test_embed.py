"""``python -m app embed``: index-time vectors added in place to an existing index (noida-db,
a real Elasticsearch-API engine, with the user's own field names; and the embedded index)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from elasticsearch import AsyncElasticsearch

from rerank.engine import ScoringEngine
from retrieval.elastic.embed import embed_in_place
from retrieval.elastic.search import make_client
from retrieval.embedded.index import build_index, embed_index
from retrieval.embedded.layout import read_pointer
from retrieval.embedded.search import EmbeddedBackend
from retrieval.types import Document, SubQuery
from retrieval.vectors import from_b64, stored_tag
from tests.support import ROOT, SMALL_CORPUS, embedder

FIELDS = ("name", "body")
USER_MAPPING = {
    "properties": {
        "name": {"type": "text", "analyzer": "english"},
        "body": {"type": "text", "analyzer": "english"},
        "lang": {"type": "keyword"},
    }
}


async def _load_user_index(es: AsyncElasticsearch, index: str) -> dict[str, dict[str, Any]]:
    """The user's own index: other field names, an extra field, no vectors."""
    await es.indices.create(index=index, mappings=USER_MAPPING)
    docs = {
        d.doc_id: {"name": d.title, "body": d.text, "lang": "en" if i % 2 else "de"}
        for i, d in enumerate(SMALL_CORPUS)
    }
    for doc_id, src in docs.items():
        await es.index(index=index, id=doc_id, document=src)
    await es.indices.refresh(index=index)
    return docs


async def _sources(es: AsyncElasticsearch, index: str) -> dict[str, dict[str, Any]]:
    return {d.doc_id: (await es.get(index=index, id=d.doc_id))["_source"] for d in SMALL_CORPUS}


async def test_embed_adds_vectors_in_place_and_a_rerun_skips_all(
    noida_url: str, noida_index: str, engine: ScoringEngine, tag: str
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        before = await _load_user_index(es, noida_index)
        embed = embedder(engine)
        report = await embed_in_place(
            es, noida_index, embed, tag, 384, FIELDS, batch=4, progress=False
        )
        assert (report.embedded, report.skipped, report.failed) == (6, 0, 0)
        want = dict(zip([d.doc_id for d in SMALL_CORPUS], embed(SMALL_CORPUS), strict=True))
        for doc_id, src in (await _sources(es, noida_index)).items():
            assert {k: src[k] for k in before[doc_id]} == before[doc_id]  # untouched
            assert set(src) == {*before[doc_id], "embedding_f16", "embedding_tag", "embedding"}
            assert src["embedding_tag"] == tag
            np.testing.assert_allclose(from_b64(src["embedding_f16"]), want[doc_id], atol=2e-3)
            assert len(src["embedding"]) == 384
        props = (await es.indices.get_mapping(index=noida_index))[noida_index]["mappings"]
        types = {k: v["type"] for k, v in props["properties"].items()}
        assert types["embedding_f16"] == "binary" and types["embedding_tag"] == "keyword"
        assert types["embedding"] == "dense_vector" and types["lang"] == "keyword"

        again = await embed_in_place(
            es, noida_index, embed, tag, 384, FIELDS, batch=4, progress=False
        )
        assert (again.embedded, again.skipped, again.failed) == (0, 6, 0)
    finally:
        await es.close()


async def test_an_interrupted_embed_continues_where_it_stopped(
    noida_url: str, noida_index: str, engine: ScoringEngine, tag: str
) -> None:
    es = make_client(noida_url, timeout_s=30)
    calls: list[int] = []

    def counting(docs: Sequence[Document]) -> np.ndarray:
        calls.append(len(docs))
        return embedder(engine)(docs)

    try:
        await _load_user_index(es, noida_index)
        first = await embed_in_place(
            es, noida_index, counting, tag, 384, FIELDS, batch=2, max_batches=1, progress=False
        )
        assert (first.embedded, first.skipped) == (2, 0)
        rest = await embed_in_place(
            es, noida_index, counting, tag, 384, FIELDS, batch=2, progress=False
        )
        assert (rest.embedded, rest.skipped, rest.failed) == (4, 2, 0)
        assert sum(calls) == 6  # each document embedded once over both runs
        tags = {s.get("embedding_tag") for s in (await _sources(es, noida_index)).values()}
        assert tags == {tag}
    finally:
        await es.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


async def test_embed_command_on_elasticsearch(
    noida_url: str, noida_index: str, default_model_dir: Path, tag: str
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        before = await _load_user_index(es, noida_index)
        args = ["embed", "--es-url", noida_url, "--es-index", noida_index]
        args += ["--es-title-field", "name", "--es-text-field", "body", "--batch", "4"]
        args += ["--model-dir", str(default_model_dir), "--precision", "fp32"]
        args += ["--max-length", "256"]
        proc = await asyncio.to_thread(_cli, *args)
        assert proc.returncode == 0, proc.stderr
        assert "embedded 6, skipped 0 (already tagged), failed 0" in proc.stdout
        for doc_id, src in (await _sources(es, noida_index)).items():
            assert src["embedding_tag"] == stored_tag(tag, ("name", "body"))  # fields named
            assert {k: src[k] for k in before[doc_id]} == before[doc_id]
    finally:
        await es.close()


def test_embed_command_needs_a_bi_encoder(cross_model_dir: Path) -> None:
    proc = _cli(
        "embed",
        "--es-url",
        "http://127.0.0.1:9",
        "--model-dir",
        str(cross_model_dir),
        "--precision",
        "fp32",
    )
    assert proc.returncode == 2, proc.stderr
    assert "first-passage bi-encoder" in proc.stdout + proc.stderr


def test_embed_command_on_a_missing_index_is_a_clear_error(
    noida_url: str, noida_index: str, default_model_dir: Path
) -> None:
    proc = _cli(
        "embed",
        "--es-url",
        noida_url,
        "--es-index",
        noida_index,
        "--model-dir",
        str(default_model_dir),
    )
    assert proc.returncode == 2  # a set-up error: the flag names no index
    assert f"index '{noida_index}' not found: set --es-index" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_embed_on_the_embedded_index_switches_to_a_copy_with_vectors(
    tmp_path: Path, engine: ScoringEngine, tag: str
) -> None:
    build_index(tmp_path, SMALL_CORPUS, progress=False)
    backend = EmbeddedBackend(tmp_path, tag)
    backend.RECHECK_S = 0.0
    try:
        (hits,) = await backend.search_chunk([SubQuery.match("wing")], 3)
        assert not isinstance(hits, Exception) and hits and hits[0].vector is None

        report = await asyncio.to_thread(embed_index, tmp_path, embedder(engine), tag, False)
        assert (report.embedded, report.skipped, report.failed) == (6, 0, 0)
        # The running backend picks the new build up without a restart.
        (hits,) = await backend.search_chunk([SubQuery.match("wing")], 3)
        assert not isinstance(hits, Exception) and hits[0].doc_id == "wing"
        assert hits[0].vector is not None and hits[0].vector.shape == (384,)

        pointer = read_pointer(tmp_path)
        again = await asyncio.to_thread(embed_index, tmp_path, embedder(engine), tag, False)
        assert (again.embedded, again.skipped) == (0, 6)
        assert read_pointer(tmp_path) == pointer  # nothing to do: no rebuild
    finally:
        await backend.close()
