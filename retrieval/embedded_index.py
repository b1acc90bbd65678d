"""Building the embedded tantivy index (``python -m app index`` without Elasticsearch)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import tantivy
from tqdm import tqdm

from retrieval.embedded import ANALYZER, _analyzer
from retrieval.types import Document
from retrieval.vectors import BATCH, Embedder, chunked, pack


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
