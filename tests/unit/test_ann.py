"""Approximate kNN over a large embedded index (issue 25, retrieval/embedded/ann.py): the
HNSW index answers as exact kNN does, only vectors carrying the serving tag go in, the
threshold picks the path, and a build keeps its index for a warm start. Real faiss and
tantivy on seeded, well-separated vectors (clusters of ten); nothing is timed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tantivy

from retrieval.embedded import ann
from retrieval.embedded.ann import AnnConfig, HnswIndex
from retrieval.embedded.index import _schema, build_index
from retrieval.embedded.knn import VectorTable
from retrieval.embedded.layout import live_dir, new_build, switch
from retrieval.embedded.search import ANALYZER, EmbeddedBackend, _analyzer
from retrieval.types import Document
from retrieval.vectors import pack
from tests.support import ROOT

DIM, N, K = 32, 2000, 10
TAG = "model-a|title=title|text=text"
APPROX = AnnConfig(exact_max=0, ef=64)


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 10, DIM))
    x = centres[np.arange(n) % len(centres)] + 0.2 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


VECS = _vectors(N, seed=1)
QUERIES = VECS[::40] + 0.05 * np.random.default_rng(2).standard_normal((N // 40, DIM))
DOCS = [Document(f"d{i}", f"title {i}", f"text {i}") for i in range(N)]


def _embed(batch: Sequence[Document]) -> np.ndarray:
    return VECS[[int(d.doc_id[1:]) for d in batch]]


def _build(path: Path, config: AnnConfig | None) -> Path:
    build_index(path, DOCS, progress=False, embed=_embed, tag=TAG, ann=config)
    live = live_dir(path)
    assert live is not None and live != path
    return live


def _table(live: Path, tag: str = TAG) -> VectorTable:
    return VectorTable.read(tantivy.Index.open(str(live)).searcher(), tag)


async def _ids(backend: EmbeddedBackend, q: np.ndarray) -> list[str]:
    return [h.doc_id for h in await backend.search_knn(q, K)]


async def test_the_hnsw_index_answers_as_exact_knn_does(tmp_path: Path) -> None:
    _build(tmp_path, APPROX)
    approx, exact = EmbeddedBackend(tmp_path, TAG, APPROX), EmbeddedBackend(tmp_path, TAG)
    recalls = []
    for q in QUERIES:
        got, want = await approx.search_knn(q, K), await exact.search_knn(q, K)
        recalls.append(len({h.doc_id for h in got} & {h.doc_id for h in want}) / K)
        # Cosines are exact (recomputed for what the graph found), best first.
        scores = [h.score for h in got]
        assert scores == sorted(scores, reverse=True)
        best = {h.doc_id: h.score for h in want}
        shared = [h for h in got if h.doc_id in best]
        assert all(h.score == pytest.approx(best[h.doc_id], abs=1e-5) for h in shared)
        assert all(h.vector is not None and h.title for h in got)
    assert np.mean(recalls) >= 0.9
    await approx.close()
    await exact.close()


def test_the_same_vectors_build_the_same_graph() -> None:
    one, two = HnswIndex.build(VECS), HnswIndex.build(VECS)
    assert all(one.search(q, K, 64) == two.search(q, K, 64) for q in QUERIES)


def _graphs_built() -> int:
    """Waits for the graphs building in the background (a backend's first kNN on a build
    without a saved one); how many there were."""
    builders = [t for t in threading.enumerate() if t.name == "knn-graph"]
    for t in builders:
        t.join(120)
    return len(builders)


async def test_vectors_of_another_tag_never_go_in(tmp_path: Path) -> None:
    """A build whose nearest vectors are another model's: neither the table, nor the graph,
    nor a graph saved for that model's tag answers with them."""
    build = new_build(tmp_path)
    index = tantivy.Index(_schema(), path=str(build), reuse=False)
    index.register_tokenizer(ANALYZER, _analyzer())
    writer = index.writer(heap_size=50_000_000, num_threads=1)
    stale = [Document(f"old{i}", "old", "old") for i in range(len(QUERIES))]
    for doc, vec, tag in [
        *((d, v, TAG) for d, v in zip(DOCS, VECS, strict=True)),
        *((d, q, "model-b|title=title|text=text") for d, q in zip(stale, QUERIES, strict=True)),
    ]:
        fields = {"doc_id": doc.doc_id, "title": doc.title, "text": doc.text}
        writer.add_document(tantivy.Document(**fields, vec=pack(vec), vec_tag=tag))
    writer.commit()
    writer.wait_merging_threads()
    switch(tmp_path, build)
    other = "model-b|title=title|text=text"
    _table(build, other).with_ann(build, other, APPROX)
    assert len(list(build.glob("knn-*.faiss"))) == 1
    approx, exact = EmbeddedBackend(tmp_path, TAG, APPROX), EmbeddedBackend(tmp_path, TAG)
    for q in QUERIES:
        got = await _ids(approx, q)
        assert not any(i.startswith("old") for i in got)
        assert len(set(got) & set(await _ids(exact, q))) >= K - 2
    _graphs_built()
    for q in QUERIES:  # through the graph now
        assert not any(i.startswith("old") for i in await _ids(approx, q))
    assert len(list(build.glob("knn-*.faiss"))) == 2  # one per tag, never shared
    await approx.close()
    await exact.close()


def test_the_threshold_picks_exact_or_approximate(tmp_path: Path) -> None:
    at, past = AnnConfig(exact_max=N, ef=64), AnnConfig(exact_max=N - 1, ef=64)
    live = _build(tmp_path / "at", at)
    assert not list(live.glob("knn-*"))  # exact: the build holds no graph
    table = _table(live)
    assert table.with_ann(None, TAG, at).ann is None
    assert table.with_ann(None, TAG, past).ann is not None
    live = _build(tmp_path / "past", past)
    assert sorted(p.suffix for p in live.glob("knn-*")) == [".faiss", ".json"]


async def test_a_warm_start_reads_the_graph_the_build_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _build(tmp_path, APPROX)
    ids = _table(live).ids
    saved = ann.load(live, TAG, ids)
    assert saved is not None and len(saved) == N
    want = [{ids[row] for row in saved.search(q, K, APPROX.ef)} for q in QUERIES]

    def no_build(matrix: np.ndarray) -> HnswIndex:
        raise AssertionError("a warm start built the graph again")

    monkeypatch.setattr(HnswIndex, "build", staticmethod(no_build))
    backend = EmbeddedBackend(tmp_path, TAG, APPROX)
    assert [set(await _ids(backend, q)) for q in QUERIES] == want
    await backend.close()
    # The graph is trusted only for the rows it was built over: another tag has none.
    assert ann.load(live, "model-b", ids) is None
    assert ann.load(live, TAG, ids[::-1]) is None


async def test_a_build_without_a_graph_gets_one_at_first_search(tmp_path: Path) -> None:
    """An index built before the graph existed (or with exact kNN) gets one built at first
    use on a thread of its own (the search thread would hold every BM25 search for the
    minute it takes at 100,000), searched through once it is in, and saved beside the
    build for the next start. Exact answers meanwhile."""
    live = _build(tmp_path, None)
    assert not list(live.glob("knn-*"))
    backend = EmbeddedBackend(tmp_path, TAG, APPROX)
    await backend.check_knn()
    assert _graphs_built(), "no graph built in the background"
    assert ann.load(live, TAG, _table(live).ids) is not None
    assert backend._vectors().ann is not None  # searched through the graph from now on
    await backend.close()


def test_building_and_searching_start_no_thread() -> None:
    """faiss's OpenMP thread count is per thread: a graph built on a worker thread (as the
    service's executor builds one) would start one OpenMP thread per core, and keep them,
    beside ONNX Runtime's. With 4 allowed, the process has the same threads after."""
    script = textwrap.dedent(
        """
        import os, threading
        import numpy as np
        from retrieval.embedded.ann import HnswIndex
        rows = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
        def threads():
            return len(os.listdir("/proc/self/task"))
        def work():
            before = threads()  # this worker included (its end would race a count after)
            HnswIndex.build(rows).search(rows[0], 10, 64)
            print(before, threads())
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert after == before
