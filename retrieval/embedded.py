"""Embedded BM25 backend on an on-disk tantivy index, used when no Elasticsearch is set.

User text never reaches tantivy's query parser: it is run through the index's own analyzer
and turned into term queries, so no query syntax can be injected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import tantivy

from retrieval.errors import IndexMissing, RetrievalError
from retrieval.types import Hit, SubQuery
from retrieval.vectors import unpack

T = TypeVar("T")
ANALYZER = "en_bm25"
TEXT_FIELDS = ("title", "text")


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

    def __init__(self, path: Path, vector_tag: str | None = None) -> None:
        """``vector_tag``: return stored vectors carrying this tag (None: never)."""
        if not (path / "meta.json").is_file():
            raise IndexMissing(f"no embedded index at {path} (run `python -m app index`)")
        self._index = tantivy.Index.open(str(path))
        self._analyzer = _analyzer()
        self._index.register_tokenizer(ANALYZER, self._analyzer)
        self._schema = self._index.schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tantivy")
        # Indexes built without vectors simply have no ``vec_tag`` to match.
        self._vector_tag = vector_tag

    async def _offload(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _query(self, q: SubQuery) -> tantivy.Query:
        if q.kind == "ids":
            return tantivy.Query.term_set_query(self._schema, "doc_id", list(q.ids))
        fields = [q.field] if q.field else list(TEXT_FIELDS)
        terms = self._analyzer.analyze(q.text)
        clauses = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, f, t))
            for f in fields
            for t in terms
        ]
        return tantivy.Query.boolean_query(clauses) if clauses else tantivy.Query.empty_query()

    def _search_sync(self, queries: Sequence[SubQuery], k: int) -> list[list[Hit] | RetrievalError]:
        searcher = self._index.searcher()
        out: list[list[Hit] | RetrievalError] = []
        for q in queries:
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
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        return await self._offload(lambda: self._search_sync(queries, k))

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
