"""Rebuilds without downtime: Elasticsearch (noida-db) behind an alias moved in one
``_aliases`` call; the embedded index built beside the live one and switched by a pointer.
And what a crash mid-build leaves: ``kill -9`` of ``python -m app index`` at several points
while a server answers from the same index, then a restarted server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import tantivy

from app.config import Config
from retrieval.config import RetrievalConfig
from retrieval.corpus import write_beir_corpus
from retrieval.elastic.index import NotAnAlias, alias_targets, mapping
from retrieval.elastic.indexer import ElasticIndexer
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.embedded.index import _schema, build_index
from retrieval.embedded.layout import BUILDS, live_dir, read_pointer
from retrieval.embedded.search import ANALYZER, EmbeddedBackend, _analyzer
from retrieval.types import Document, SubQuery
from tests.support import ROOT, SMALL_CORPUS, MakeApp

NEW_CORPUS = [
    Document("rotor", "Helicopter rotor noise", "Blade vortex interaction makes rotor noise."),
    Document("nozzle", "Nozzle flow", "Supersonic nozzle flow separation and shocks."),
]


async def _ids(backend: Any, text: str) -> list[str]:
    (hits,) = await backend.search_chunk([SubQuery.match(text)], 5)
    assert not isinstance(hits, Exception), hits
    return [h.doc_id for h in hits]


# --- Elasticsearch: the alias moves, the old physical index goes ---------------------------


async def test_es_rebuild_moves_the_alias_and_drops_the_old_index(
    noida_url: str, noida_index: str
) -> None:
    cfg = RetrievalConfig(es_url=noida_url, es_index=noida_index)
    es = make_client(noida_url, timeout_s=30)
    backend = ElasticBackend(make_client(noida_url, timeout_s=30), noida_index)
    try:
        assert await ElasticIndexer(cfg).index(SMALL_CORPUS, 6, progress=False) == 6
        (first,) = await alias_targets(es, noida_index)
        assert re.fullmatch(rf"{noida_index}-\d{{13}}", first)
        assert await _ids(backend, "wing propeller") == ["wing"]
        # A crashed earlier rebuild's index, behind no alias: removed by the next one.
        await es.indices.create(index=f"{noida_index}-1700000000000")
        await es.indices.create(index=f"{noida_index}-2024")  # not ours: kept

        assert await ElasticIndexer(cfg).index(NEW_CORPUS, 2, progress=False) == 2
        (second,) = await alias_targets(es, noida_index)
        assert second != first
        assert not await es.indices.exists(index=first)
        assert not await es.indices.exists(index=f"{noida_index}-1700000000000")
        assert await es.indices.exists(index=f"{noida_index}-2024")
        assert await _ids(backend, "rotor noise") == ["rotor"]
        assert await _ids(backend, "wing propeller") == []
        assert await backend.num_docs() == 2
    finally:
        await es.close()
        await backend.close()


async def test_es_rebuild_on_a_plain_index_says_how_to_migrate(
    noida_url: str, noida_index: str, tmp_path: Path
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        # A plain index as an earlier version built it: our mapping, no `_meta` mark.
        legacy = mapping()
        del legacy["_meta"]
        await es.indices.create(index=noida_index, mappings=legacy)
        await es.index(index=noida_index, id="a", document={"title": "t"}, refresh=True)
        cfg = RetrievalConfig(es_url=noida_url, es_index=noida_index)
        with pytest.raises(NotAnAlias, match="plain index, not an alias") as err:
            await ElasticIndexer(cfg).index(NEW_CORPUS, 2, progress=False)
        assert "python -m app migrate" in str(err.value) and "--replace-index" in str(err.value)

        write_beir_corpus(iter(NEW_CORPUS), tmp_path)
        proc = await _run_index(
            ["--dataset", str(tmp_path), "--es-url", noida_url, "--es-index", noida_index]
        )
        out = (await proc.communicate())[1].decode()
        assert proc.returncode == 2 and "plain index, not an alias" in out
        assert (await es.count(index=noida_index))["count"] == 1  # nothing deleted
    finally:
        await es.close()


async def test_readyz_is_503_for_an_empty_es_index(
    noida_url: str, noida_index: str, make_app: MakeApp
) -> None:
    es = make_client(noida_url, timeout_s=30)
    # The fields the service reads exist (the start-up check passes): only documents lack.
    await es.indices.create(index=noida_index, mappings=mapping())
    client = await make_app(backend=ElasticBackend(make_client(noida_url), noida_index))
    resp = await client.get("/readyz")
    assert resp.status == 503
    health = await resp.json()
    assert health["checks"] == {"model": True, "retrieval": True, "documents": False}
    assert health["reasons"] == {"documents": f"index {noida_index!r} has no documents"}
    await es.indices.delete(index=noida_index)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["reasons"]["documents"].startswith(
        f"index {noida_index!r} not found: set --es-index"
    )
    await es.close()


# --- Embedded: a new build beside the live one, one rename to switch ------------------------


def _flat_index(path: Path, docs: list[Document]) -> None:
    """An index in the layout of earlier versions: tantivy's files directly in ``path``."""
    index = tantivy.Index(_schema(), path=str(path), reuse=False)
    index.register_tokenizer(ANALYZER, _analyzer())
    writer = index.writer(heap_size=15_000_000, num_threads=1)
    for d in docs:
        writer.add_document(tantivy.Document(doc_id=d.doc_id, title=d.title, text=d.text))
    writer.commit()
    writer.wait_merging_threads()


async def test_an_old_flat_index_opens_and_a_rebuild_replaces_it(tmp_path: Path) -> None:
    _flat_index(tmp_path, SMALL_CORPUS)
    (tmp_path / "source.sha256").write_text("not tantivy's")  # eval's marker stays
    backend = EmbeddedBackend(tmp_path)
    backend.RECHECK_S = 0.0
    try:
        assert await _ids(backend, "wing propeller") == ["wing"]
        await asyncio.to_thread(build_index, tmp_path, NEW_CORPUS, None, False)
        assert await _ids(backend, "rotor noise") == ["rotor"]  # no restart
        left = sorted(os.listdir(tmp_path))
        assert left == ["build.lock", "builds", "current", "source.sha256"]
        assert live_dir(tmp_path) == tmp_path / BUILDS / str(read_pointer(tmp_path))
    finally:
        await backend.close()


async def test_a_running_server_follows_rebuilds_and_never_sees_a_partial_one(
    tmp_path: Path, make_app: MakeApp
) -> None:
    build_index(tmp_path, SMALL_CORPUS, progress=False)
    backend = EmbeddedBackend(tmp_path)
    backend.RECHECK_S = 0.0
    client = await make_app(backend=backend, budget_ms=60_000)
    seen: set[int] = set()
    stop = asyncio.Event()

    async def keep_searching() -> None:
        while not stop.is_set():
            # Every answer is one whole index: 6 documents or 2, nothing in between.
            seen.add(await backend.num_docs())
            assert await _ids(backend, "wing propeller rotor noise")

    searcher = asyncio.create_task(keep_searching())
    try:
        for corpus in (NEW_CORPUS, SMALL_CORPUS, NEW_CORPUS):
            await asyncio.to_thread(build_index, tmp_path, corpus, None, False)
            await asyncio.sleep(0.05)
        stop.set()
        await searcher
    finally:
        stop.set()
    assert seen <= {6, 2} and 2 in seen
    assert len(list((tmp_path / BUILDS).iterdir())) == 1  # old builds removed
    resp = await client.post("/v1/search", json={"query": "rotor noise", "size": 2})
    assert resp.status == 200 and (await resp.json())["hits"][0]["id"] == "rotor"


async def test_readyz_is_503_for_an_embedded_index_with_no_documents(
    tmp_path: Path, make_app: MakeApp
) -> None:
    build_index(tmp_path, [], progress=False)
    client = await make_app(backend=EmbeddedBackend(tmp_path))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["documents"] is False


# --- kill -9 of the indexer ------------------------------------------------------------------


async def _run_index(args: list[str], stall: str | None = None) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    if stall:
        env["RERANK_INDEX_STALL"] = stall  # RetrievalConfig.index_stall
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "index",
        "--no-embed",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _kill_at(args: list[str], stall: str) -> None:
    """Run the indexer until it reaches ``stall``, then ``kill -9`` it."""
    proc = await _run_index(args, stall)
    assert proc.stderr is not None
    tail: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, f"indexer exited ({await proc.wait()}) before {stall}: {tail}"
            tail.append(line)
            if f"stalled at {stall}" in line:
                break
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize("stall", ["start", "load", "switch"])
async def test_kill_9_mid_build_leaves_the_old_index_serving(
    stall: str, tmp_path: Path, make_app: MakeApp
) -> None:
    index, data = tmp_path / "index", tmp_path / "data"
    build_index(index, SMALL_CORPUS, progress=False)
    write_beir_corpus(iter(NEW_CORPUS), data)
    backend = EmbeddedBackend(index)
    backend.RECHECK_S = 0.0
    client = await make_app(backend=backend, budget_ms=60_000)
    args = ["--dataset", str(data), "--index-dir", str(index)]

    await _kill_at(args, stall)

    for b in (backend, EmbeddedBackend(index)):  # the running server and a restarted one
        assert await _ids(b, "wing propeller") == ["wing"]
        assert await b.num_docs() == 6
    resp = await client.post("/v1/search", json={"query": "wing propeller", "size": 1})
    assert resp.status == 200 and (await resp.json())["hits"][0]["id"] == "wing"
    assert (await client.get("/readyz")).status == 200
    cfg = Config().override(index_dir=index)
    assert live_dir(cfg.retrieval_config().index_dir or index) is not None

    # The next build completes, cleans up the crashed one's leftovers, and is served.
    proc = await _run_index(args)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert await _ids(backend, "rotor noise") == ["rotor"]
    assert [p.name for p in (index / BUILDS).iterdir()] == [read_pointer(index)]


@pytest.mark.parametrize("stall", ["load", "switch"])
async def test_kill_9_mid_es_rebuild_leaves_the_alias_serving(
    stall: str, noida_url: str, noida_index: str, tmp_path: Path
) -> None:
    cfg = RetrievalConfig(es_url=noida_url, es_index=noida_index)
    await ElasticIndexer(cfg).index(SMALL_CORPUS, 6, progress=False)
    es = make_client(noida_url, timeout_s=30)
    backend = ElasticBackend(make_client(noida_url, timeout_s=30), noida_index)
    try:
        (live,) = await alias_targets(es, noida_index)
        write_beir_corpus(iter(NEW_CORPUS), tmp_path)
        args = ["--dataset", str(tmp_path), "--es-url", noida_url, "--es-index", noida_index]

        await _kill_at(args, stall)

        assert await alias_targets(es, noida_index) == [live]
        assert await _ids(backend, "wing propeller") == ["wing"]
        proc = await _run_index(args)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        (new,) = await alias_targets(es, noida_index)
        rows = (await es.cat.indices(format="json")).body
        assert sorted(r["index"] for r in rows if r["index"].startswith(noida_index)) == [new]
        assert await _ids(backend, "rotor noise") == ["rotor"]
    finally:
        await es.close()
        await backend.close()
