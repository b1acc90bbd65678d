"""Loading documents into Elasticsearch: the mapping, ``_bulk`` loads, and the
``Indexer`` for ``python -m app index``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_streaming_bulk

from retrieval.config import RetrievalConfig
from retrieval.elastic import TEXT, TITLE, VECTOR, VECTOR_F16, VECTOR_TAG, make_client
from retrieval.errors import RetrievalError
from retrieval.types import Document
from retrieval.vectors import BATCH, Embedder, chunked, to_b64

MAPPING: dict[str, Any] = {
    "properties": {
        TITLE: {"type": "text", "analyzer": "english"},
        TEXT: {"type": "text", "analyzer": "english"},
        VECTOR_F16: {"type": "binary"},
        VECTOR_TAG: {"type": "keyword"},
    }
}

INDEXING_TIMEOUT_S = 60.0  # the least a ``_bulk`` request is given


class ElasticIndexer:
    """The configured Elasticsearch index as an ``Indexer``: same cluster and key, a
    timeout fit for ``_bulk``."""

    def __init__(self, config: RetrievalConfig) -> None:
        assert config.es_url, "ElasticIndexer needs es_url"
        self._url, self.name = config.es_url, config.es_index
        self._timeout_s = max(config.es_timeout_s, INDEXING_TIMEOUT_S)
        self._api_key = config.es_api_key

    @property
    def where(self) -> str:
        return f"{self._url} index {self.name!r}"

    def client(self) -> AsyncElasticsearch:
        return make_client(self._url, timeout_s=self._timeout_s, api_key=self._api_key)

    async def count(self) -> int | None:
        """Documents in the index; None when it does not exist."""
        client = self.client()
        try:
            got = await client.options(ignore_status=404).count(index=self.name)
        finally:
            await client.close()
        return int(got.body["count"]) if got.meta.status == 200 else None

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
        client = self.client()
        try:
            return await index_corpus(
                client, self.name, docs, total, progress, embed=embed, tag=tag, dims=dims
            )
        finally:
            await client.close()


async def index_corpus(
    client: AsyncElasticsearch,
    index: str,
    docs: Iterable[Document],
    total: int | None = None,
    progress: bool = True,
    embed: Embedder | None = None,
    tag: str = "",
    dims: int | None = None,
) -> int:
    """``index_documents`` behind a progress bar; returns how many were indexed."""
    from tqdm import tqdm

    done = 0
    with tqdm(total=total, unit="doc", desc="indexing", disable=not progress) as bar:
        async for n in index_documents(client, index, docs, embed=embed, tag=tag, dims=dims):
            bar.update(n)
            done += n
    return done


async def index_documents(
    client: AsyncElasticsearch,
    index: str,
    docs: Iterable[Document],
    recreate: bool = True,
    embed: Embedder | None = None,
    tag: str = "",
    dims: int | None = None,
) -> AsyncIterator[int]:
    """Create the index with an explicit mapping and bulk-load; yields after each document
    so the caller can drive a progress bar. With ``embed``, each document carries its
    vector (``dims`` wide, for the dense_vector mapping) tagged ``tag``."""
    if recreate:
        mapping = MAPPING
        if embed is not None and dims:
            mapping = {
                "properties": {
                    **MAPPING["properties"],
                    VECTOR: {"type": "dense_vector", "dims": dims, "index": False},
                }
            }
        await client.options(ignore_status=404).indices.delete(index=index)
        await client.indices.create(index=index, mappings=mapping)

    async def actions() -> AsyncIterator[dict[str, Any]]:
        for batch in chunked(docs, BATCH):
            # Embedding is CPU work: off the loop that drives the bulk requests.
            vecs = await asyncio.to_thread(embed, batch) if embed is not None else None
            for i, d in enumerate(batch):
                action: dict[str, Any] = {"_index": index, "_id": d.doc_id, TITLE: d.title}
                action[TEXT] = d.text
                if vecs is not None:
                    action[VECTOR_F16] = to_b64(vecs[i])
                    action[VECTOR_TAG] = tag
                    if dims:
                        action[VECTOR] = [round(float(x), 6) for x in vecs[i]]
                yield action

    async for ok, item in async_streaming_bulk(
        client, actions(), chunk_size=500, raise_on_error=False
    ):
        if not ok:
            raise RetrievalError(f"bulk indexing failed: {item}")
        yield 1
    await client.indices.refresh(index=index)
