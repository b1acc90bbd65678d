"""Building the embedded tantivy index (``python -m app index`` without Elasticsearch)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import tantivy
from tqdm import tqdm

from retrieval.corpus import read_beir_corpus
from retrieval.embedded.ann import AnnConfig
from retrieval.embedded.knn import VectorTable
from retrieval.embedded.layout import build_lock, live_dir, new_build, switch
from retrieval.embedded.search import ANALYZER, _analyzer
from retrieval.errors import IndexMissing
from retrieval.stall import Stall, no_stall
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
    stage: Stall = no_stall,
    ann: AnnConfig | None = None,
) -> int:
    """Build a new index from documents beside the live one at ``path`` and switch to it
    (``retrieval/embedded/layout.py``); returns how many were indexed. With ``embed``, each
    document is stored with its vector, tagged ``tag``, and past ``ann.exact_max`` of them
    the build gets their HNSW index (``retrieval/embedded/ann.py``)."""

    def rows() -> Iterator[tuple[list[Document], list[bytes | None]]]:
        for batch in chunked(docs, BATCH):
            vecs = embed(batch) if embed is not None else None
            yield batch, [pack(v) for v in vecs] if vecs is not None else [None] * len(batch)

    with build_lock(path):
        return _write(path, rows(), tag, total, progress, stage=stage, ann=ann)


def _write(
    root: Path,
    rows: Iterable[tuple[list[Document], list[bytes | None]]],
    tag: str,
    total: int | None,
    progress: bool,
    desc: str = "indexing",
    stage: Stall = no_stall,
    ann: AnnConfig | None = None,
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
    if ann is not None and tag and n > ann.exact_max:
        # Read back as a search will read it, so the saved graph's rows are the table's.
        index.reload()
        table = VectorTable.read(index.searcher(), tag)
        if len(table):
            table.with_ann(build, tag, ann)
    switch(root, build, stage)
    return n


def embed_index(
    path: Path,
    embed: Embedder,
    tag: str,
    progress: bool = True,
    page: int = 1000,
    stage: Stall = no_stall,
    ann: AnnConfig | None = None,
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

        _write(path, rows(), tag, total, progress, desc="embedding", stage=stage, ann=ann)
    report.seconds = time.perf_counter() - t0
    return report


MARKER = "source.sha256"  # the fingerprint of the corpus a ``load_once`` index was built from


def _is_current(index_dir: Path, corpus: Path, tag: str) -> bool:
    marker = index_dir / MARKER
    fp = _fingerprint(corpus, tag)
    return marker.is_file() and marker.read_text() == fp and live_dir(index_dir) is not None


def _mark_current(index_dir: Path, corpus: Path, tag: str) -> None:
    (index_dir / MARKER).write_text(_fingerprint(corpus, tag))


def _fingerprint(corpus: Path, tag: str) -> str:
    """The corpus file's identity, and the tag of the vectors stored with it (if any)."""
    st = corpus.stat()
    key = f"{corpus.resolve()}:{st.st_size}:{st.st_mtime_ns}" + (f":{tag}" if tag else "")
    return hashlib.sha256(key.encode()).hexdigest()


class EmbeddedIndexer:
    """The embedded index as an ``Indexer`` (opened by ``retrieval/factory.py``):
    ``build_index`` off the event loop."""

    def __init__(self, path: Path, stage: Stall = no_stall, ann: AnnConfig | None = None) -> None:
        self.path, self._stage, self._ann = path, stage, ann

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
        return await asyncio.to_thread(
            build_index, self.path, docs, total, progress, embed, tag, self._stage, self._ann
        )

    async def load_once(
        self,
        corpus: Path,
        total: int,
        *,
        embed: Embedder | None = None,
        tag: str = "",
        dims: int | None = None,
        progress: bool = True,
    ) -> None:
        """Builds from the corpus file unless the index was built from this very file
        (path, size, mtime) with these vectors (``tag``): the ``MARKER`` beside the builds."""
        if not await asyncio.to_thread(_is_current, self.path, corpus, tag):
            docs = read_beir_corpus(corpus)
            await self.index(docs, total, embed=embed, tag=tag, dims=dims, progress=progress)
            await asyncio.to_thread(_mark_current, self.path, corpus, tag)

    async def embed(
        self, embed: Embedder, tag: str, dims: int, *, batch: int, max_batches: int | None
    ) -> EmbedReport:
        """``embed_index``: a rebuild with vectors (``batch`` and ``max_batches`` are
        Elasticsearch's paging; a build here is whole or nothing)."""
        return embed_index(self.path, embed, tag, stage=self._stage, ann=self._ann)
