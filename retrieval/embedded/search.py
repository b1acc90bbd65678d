"""Embedded BM25 backend on an on-disk tantivy index, used when no Elasticsearch is set.

User text never reaches tantivy's query parser: it is run through the index's own analyzer
and turned into term queries, so no query syntax can be injected.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import tantivy

from retrieval.embedded.ann import AnnConfig, for_table, load_saved
from retrieval.embedded.dsl import TEXT_FIELDS, Translator
from retrieval.embedded.knn import VectorTable
from retrieval.embedded.layout import live_dir, read_pointer
from retrieval.errors import IndexMissing, KnnUnavailable, RetrievalError, UnsupportedQuery
from retrieval.types import Depth, Hit, SubQuery, depths
from retrieval.vectors import unpack
from retrieval.waiting import WaitLine

T = TypeVar("T")
log = logging.getLogger("retrieval")
ANALYZER = "en_bm25"


def _analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


class EmbeddedBackend:
    name = "embedded"

    # How often the ``current`` pointer is re-read: a rebuild is served this soon after its
    # switch (retrieval/embedded/layout.py), and a search pays one small file read at most.
    RECHECK_S = 0.2

    def __init__(
        self, path: Path, vector_tag: str | None = None, ann: AnnConfig | None = None
    ) -> None:
        """``vector_tag``: return stored vectors carrying this tag (None: never). ``ann``:
        when kNN goes through an HNSW index (None: always exact)."""
        self._root, self._ann = path, ann
        self._pointer = read_pointer(path)
        live = live_dir(path)
        if live is None:
            raise IndexMissing(f"no embedded index at {path} (run `python -m app index`)")
        self._analyzer = _analyzer()
        self._swap = threading.Lock()  # a reopen against a graph coming in (_index_later)
        self._open(live)
        self._next_check = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tantivy")
        self._waiting = WaitLine()
        # Indexes built without vectors simply have no ``vec_tag`` to match.
        self._vector_tag = vector_tag

    def _open(self, live: Path) -> None:
        # Builds never change once switched in: no reload watcher on them.
        try:
            index = tantivy.Index.open(str(live))  # takes a lock file: needs write access
        except ValueError as exc:
            raise RetrievalError(f"cannot open the embedded index at {live}: {exc}") from exc
        index.config_reader("Manual")
        index.register_tokenizer(ANALYZER, self._analyzer)
        self._index, self._schema = index, index.schema
        # Where this build's HNSW index is saved; None for the old flat layout, whose
        # directory the next build clears of tantivy's files only.
        self._build = live if live != self._root else None
        self._dsl = Translator(index.schema, self._analyzer)
        with self._swap:
            self._table: VectorTable | None = None  # this build's vectors, read at first kNN

    async def _follow(self) -> None:
        """Pick up a rebuild: reopen when the pointer names another build. A failed reopen
        (the build was replaced again meanwhile) keeps the open one and retries later."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.RECHECK_S
        pointer = read_pointer(self._root)
        if pointer == self._pointer or pointer is None:
            return

        def reopen() -> None:
            live = live_dir(self._root)
            if live is not None and live.name == pointer:
                self._open(live)
                self._pointer = pointer

        with contextlib.suppress(ValueError, OSError):
            await self._offload(reopen)

    async def num_docs(self) -> int:
        await self._follow()
        return int(self._index.searcher().num_docs)

    async def _offload(self, fn: Callable[[], T]) -> T:
        return await self._waiting.run(self._executor, fn)

    def queue_age(self) -> float:
        return self._waiting.age()

    def _query(self, q: SubQuery) -> tantivy.Query:
        if q.kind == "ids":
            return tantivy.Query.term_set_query(self._schema, "doc_id", list(q.ids))
        if q.kind == "dsl":
            return self._dsl.translate(q.dsl_query())
        fields = [q.field] if q.field else list(TEXT_FIELDS)
        terms = self._analyzer.analyze(q.text)
        clauses = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, f, t))
            for f in fields
            for t in terms
        ]
        return tantivy.Query.boolean_query(clauses) if clauses else tantivy.Query.empty_query()

    def _search_sync(
        self, asks: Sequence[tuple[SubQuery, int]]
    ) -> list[list[Hit] | RetrievalError]:
        """Each (query, hits wanted) in turn, on one searcher."""
        searcher = self._index.searcher()
        out: list[list[Hit] | RetrievalError] = []
        for q, k in asks:
            try:
                limit = max(k, len(q.ids))
                res = searcher.search(self._query(q), limit)
                hits = []
                for score, addr in res.hits:
                    d = searcher.doc(addr)
                    vec = None
                    raw = d.get_first("vec")
                    if raw and self._vector_tag and d.get_first("vec_tag") == self._vector_tag:
                        with contextlib.suppress(ValueError):  # corrupt: embed it instead
                            vec = unpack(raw)
                    hits.append(Hit(d["doc_id"][0], d["title"][0], d["text"][0], float(score), vec))
                out.append(hits)
            except ValueError as exc:
                out.append(RetrievalError(f"embedded search failed: {exc}"))
        return out

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: Depth, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        await self._follow()
        # A DSL query outside the supported subset is refused per sub-query (a 422 naming
        # it) before the search; translating twice costs microseconds.
        refused = {i: self._refusal(q) for i, q in enumerate(queries) if q.kind == "dsl"}
        asks = [
            (q, n)
            for i, (q, n) in enumerate(zip(queries, depths(k, len(queries)), strict=True))
            if refused.get(i) is None
        ]
        found = iter(await self._offload(lambda: self._search_sync(asks)))
        return [refused.get(i) or next(found) for i in range(len(queries))]

    def _refusal(self, q: SubQuery) -> UnsupportedQuery | None:
        try:
            self._dsl.translate(q.dsl_query())
        except UnsupportedQuery as exc:
            return exc
        return None

    async def search_knn(
        self, vector: np.ndarray, k: int, deadline: float | None = None
    ) -> list[Hit]:
        await self._follow()
        return await self._offload(lambda: self._knn_sync(vector, k))

    async def check_knn(self) -> None:
        """Hybrid retrieval's start-up check; reads the vectors, so the first search does
        not pay for it."""
        await self._offload(self._vectors)

    def _vectors(self) -> VectorTable:
        if self._vector_tag is None:
            raise KnnUnavailable("kNN: this model stores no document vectors (a cross-encoder)")
        if self._table is None:
            self._table = table = VectorTable.read(self._index.searcher(), self._vector_tag)
            config = self._ann
            if config is not None and len(table) > config.exact_max:
                saved = load_saved(self._build, self._vector_tag, table.ids)
                if saved is not None:
                    self._table = table.with_index(saved, config.ef)
                else:  # after the table is in: the graph swaps in only for this very table
                    self._index_later(table, config)
        if not len(self._table):
            raise KnnUnavailable(
                f"kNN: no stored vector in {self._root} was written by this model and "
                "these fields: run `python -m app embed`"
            )
        return self._table

    def _index_later(self, table: VectorTable, config: AnnConfig) -> None:
        """A build from before saved graphs (or whose graph was lost) gets one built on a
        thread of its own, ~1 min per 100,000 vectors, then saved: the search thread would
        hold every BM25 search meanwhile. Exact answers until it is in."""
        build, tag = self._build, self._vector_tag
        assert tag is not None

        def make() -> None:
            try:
                graph = for_table(build, tag, table.ids, table.matrix, config)
            except Exception:  # exact goes on answering; say why the graph is not there
                log.exception("kNN graph build failed: kNN stays exact for this build")
                return
            with self._swap:
                if self._table is table:  # still this build's table (no reopen meanwhile)
                    self._table = table.with_index(graph, config.ef)

        threading.Thread(target=make, name="knn-graph", daemon=True).start()

    def _knn_sync(self, vector: np.ndarray, k: int) -> list[Hit]:
        table = self._vectors()
        searcher = self._index.searcher()
        hits = []
        for i, sim in table.nearest(vector, k):
            doc = searcher.doc(table.addresses[i])
            title, text = doc["title"][0], doc["text"][0]
            hits.append(Hit(table.ids[i], title, text, sim, table.matrix[i]))
        return hits

    async def ping(self) -> bool:
        return True

    async def check(self) -> None:
        """The embedded schema is fixed (title, text): nothing to check."""

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
