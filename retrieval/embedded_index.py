"""Building the embedded tantivy index (``python -m app index`` without Elasticsearch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import tantivy
from tqdm import tqdm

from retrieval.embedded import ANALYZER, _analyzer
from retrieval.embedded_layout import build_lock, live_dir, new_build, stage, switch
from retrieval.errors import IndexMissing
from retrieval.types import Document
from retrieval.vectors import BATCH, Embedder, EmbedReport, chunked, pack


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
    """Build a new index from documents beside the live one at ``path`` and switch to it
    (``retrieval/embedded_layout.py``); returns how many were indexed. With ``embed``, each
    document is stored with its vector, tagged ``tag``."""

    def rows() -> Iterator[tuple[list[Document], list[bytes | None]]]:
        for batch in chunked(docs, BATCH):
            vecs = embed(batch) if embed is not None else None
            yield batch, [pack(v) for v in vecs] if vecs is not None else [None] * len(batch)

    with build_lock(path):
        return _write(path, rows(), tag, total, progress)


def _write(
    root: Path,
    rows: Iterable[tuple[list[Document], list[bytes | None]]],
    tag: str,
    total: int | None,
    progress: bool,
    desc: str = "indexing",
) -> int:
    build = new_build(root)
    stage("start")
    index = tantivy.Index(_schema(), path=str(build), reuse=False)
    index.register_tokenizer(ANALYZER, _analyzer())
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    n = 0
    with tqdm(total=total, unit="doc", desc=desc, disable=not progress) as bar:
        for batch, vecs in rows:
            for d, vec in zip(batch, vecs, strict=True):
                fields: dict[str, object] = {"doc_id": d.doc_id, "title": d.title, "text": d.text}
                if vec is not None:
                    fields.update(vec=vec, vec_tag=tag)
                writer.add_document(tantivy.Document(**fields))
            n += len(batch)
            bar.update(len(batch))
            if n == len(batch):
                stage("load")
    writer.commit()
    writer.wait_merging_threads()
    switch(root, build)
    return n


def embed_index(
    path: Path, embed: Embedder, tag: str, progress: bool = True, page: int = 1000
) -> EmbedReport:
    """Add vectors tagged ``tag`` to every document of the index at ``path`` whose stored
    tag differs, through a rebuild (copy with vectors, then the atomic switch): a search
    never sees a half-done index, and an interrupted run leaves the old one as it was."""
    report, t0 = EmbedReport(), time.perf_counter()
    with build_lock(path):
        live = live_dir(path)
        if live is None:
            raise IndexMissing(f"no embedded index at {path} (run `python -m app index`)")
        index = tantivy.Index.open(str(live))
        index.register_tokenizer(ANALYZER, _analyzer())
        searcher = index.searcher()
        total = searcher.num_docs
        found = searcher.search(tantivy.Query.term_query(index.schema, "vec_tag", tag), 1)
        tagged = found.count  # type: ignore[attr-defined]  # in tantivy, not in its stub
        if tagged == total:  # nothing to do: no rebuild
            report.skipped, report.seconds = total, time.perf_counter() - t0
            return report

        def rows() -> Iterator[tuple[list[Document], list[bytes | None]]]:
            everything = tantivy.Query.all_query()
            for offset in range(0, total, page):
                hits = searcher.search(everything, page, count=False, offset=offset).hits
                stored = [searcher.doc(addr) for _, addr in hits]
                for part in chunked(stored, BATCH):
                    docs = [Document(d["doc_id"][0], d["title"][0], d["text"][0]) for d in part]
                    vecs: list[bytes | None] = [
                        d.get_first("vec") if d.get_first("vec_tag") == tag else None for d in part
                    ]
                    todo = [i for i, v in enumerate(vecs) if v is None]
                    if todo:
                        fresh = embed([docs[i] for i in todo])
                        for i, v in zip(todo, fresh, strict=True):
                            vecs[i] = pack(v)
                    report.embedded += len(todo)
                    report.skipped += len(part) - len(todo)
                    yield docs, vecs

        _write(path, rows(), tag, total, progress, desc="embedding")
    report.seconds = time.perf_counter() - t0
    return report


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
