"""Embedded BM25 backend on an on-disk tantivy index, used when no Elasticsearch is set.

User text never reaches tantivy's query parser: it is run through the index's own analyzer
and turned into term queries, so no query syntax can be injected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import tantivy
from tqdm import tqdm

from retrieval.errors import IndexMissing, RetrievalError
from retrieval.types import Document, Hit, SubQuery
from retrieval.vectors import BATCH, Embedder, chunked, pack, unpack

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


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("doc_id", stored=True, tokenizer_name="raw")
    sb.add_text_field("title", stored=True, tokenizer_name=ANALYZER)
    sb.add_text_field("text", stored=True, tokenizer_name=ANALYZER)
    # Index-time embedding (float16 bytes) and the tag of the model that made it.
    sb.add_bytes_field("vec", stored=True, indexed=False)
    sb.add_text_field("vec_tag", stored=True, tokenizer_name="raw")
    return sb.build()


def build_index(
    path: Path,
    docs: Iterable[Document],
    total: int | None = None,
    progress: bool = True,
    embed: Embedder | None = None,
    tag: str = "",
) -> int:
    """(Re)build the index at ``path`` from documents; returns how many were indexed.
    With ``embed``, each document is stored with its vector, tagged ``tag``."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.iterdir():
        if old.is_file():
            old.unlink()
    index = tantivy.Index(_schema(), path=str(path), reuse=False)
    index.register_tokenizer(ANALYZER, _analyzer())
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    n = 0
    with tqdm(total=total, unit="doc", desc="indexing", disable=not progress) as bar:
        for batch in chunked(docs, BATCH):
            vecs = embed(batch) if embed is not None else None
            for i, d in enumerate(batch):
                fields: dict[str, object] = {"doc_id": d.doc_id, "title": d.title, "text": d.text}
                if vecs is not None:
                    fields.update(vec=pack(vecs[i]), vec_tag=tag)
                writer.add_document(tantivy.Document(**fields))
            n += len(batch)
            bar.update(len(batch))
    writer.commit()
    writer.wait_merging_threads()
    return n


class EmbeddedIndexer:
    """The embedded index as an ``Indexer``: ``build_index`` off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def where(self) -> str:
        return str(self.path)

    async def index(
        self,
        docs: Iterable[Document],
        total: int | None,
        *,
        embed: Embedder | None = None,
        tag: str = "",
        dims: int | None = None,
        progress: bool = True,
    ) -> int:
        return await asyncio.to_thread(build_index, self.path, docs, total, progress, embed, tag)


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, path: Path, vector_tag: str | None = None) -> None:
        """``vector_tag``: return stored vectors carrying this tag (None: never)."""
        if not (path / "meta.json").is_file():
            raise IndexMissing(f"no embedded index at {path} (run `python -m app index`)")
        try:
            self._index = tantivy.Index.open(str(path))  # takes a lock file: needs write access
        except ValueError as exc:
            raise RetrievalError(f"cannot open the embedded index at {path}: {exc}") from exc
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
