"""The configured Elasticsearch index as an ``Indexer`` (``retrieval/backend.py``), opened
by ``retrieval/factory.py``: ``app index`` (rebuild behind the alias, ``index.py``),
``app embed`` (vectors in place, ``embed.py``), ``app eval`` (its dataset loaded once) and
``app migrate`` (a team's index copied, ``migrate.py``; Elasticsearch only)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from elastic_transport import ApiError, TransportError
from elasticsearch import AsyncElasticsearch, NotFoundError

from retrieval.config import RetrievalConfig
from retrieval.corpus import read_beir_corpus
from retrieval.elastic.embed import embed_in_place
from retrieval.elastic.index import rebuild
from retrieval.elastic.mapping import index_missing
from retrieval.elastic.migrate import migrate
from retrieval.elastic.search import make_client
from retrieval.errors import IndexMissing, RetrievalError
from retrieval.stall import stall_at
from retrieval.types import Document
from retrieval.vectors import Embedder, EmbedReport

INDEXING_TIMEOUT_S = 60.0  # the least a ``_bulk`` request is given


class ElasticIndexer:
    """The configured Elasticsearch index as an ``Indexer``: same cluster and key, a
    timeout fit for ``_bulk``; each run loads a new physical index behind the alias."""

    def __init__(self, config: RetrievalConfig) -> None:
        assert config.es_url, "ElasticIndexer needs es_url"
        self._url, self.name = config.es_url, config.es_index
        self._timeout_s = max(config.es_timeout_s, INDEXING_TIMEOUT_S)
        self._api_key = config.es_api_key
        self._fields = (config.es_title_field, config.es_text_field)
        self._stage = stall_at(config.index_stall)

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
            return await rebuild(
                client,
                self.name,
                docs,
                total,
                progress,
                embed=embed,
                tag=tag,
                dims=dims,
                fields=self._fields,
                stage=self._stage,
            )
        finally:
            await client.close()

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
        """Loads the corpus file unless the index already holds as many documents (``app
        eval`` names an index with vectors apart: ``eval_index``)."""
        if await self.count() != total:
            docs = read_beir_corpus(corpus)
            await self.index(docs, total, embed=embed, tag=tag, dims=dims, progress=progress)

    async def embed(
        self, embed: Embedder, tag: str, dims: int, *, batch: int, max_batches: int | None
    ) -> EmbedReport:
        client = self.client()
        try:
            return await embed_in_place(
                client,
                self.name,
                embed,
                tag,
                dims,
                self._fields,
                batch=batch,
                max_batches=max_batches,
            )
        except NotFoundError as exc:
            raise IndexMissing(index_missing(self.name)) from exc
        except (ApiError, TransportError) as exc:
            raise RetrievalError(f"Elasticsearch at {self._url}: {exc}") from exc
        finally:
            await client.close()

    async def migrate(
        self,
        replace_index: bool,
        embed: Embedder | None,
        tag: str,
        dims: int | None,
        batch: int,
    ) -> str:
        """``app migrate``: the configured (team's) index copied with vectors behind the
        same name; returns the summary line."""
        client = self.client()
        try:
            done = await migrate(
                client,
                self.name,
                self._fields,
                replace_index=replace_index,
                embed=embed,
                tag=tag,
                dims=dims,
                batch=batch,
            )
        except (ApiError, TransportError) as exc:
            raise RetrievalError(f"Elasticsearch at {self._url}: {exc}") from exc
        finally:
            await client.close()
        return done.summary(self.name)


__all__ = ["INDEXING_TIMEOUT_S", "ElasticIndexer"]
