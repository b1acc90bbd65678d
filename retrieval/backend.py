"""What the rest of the service needs from a retrieval backend: searching (``Backend``) and
loading documents (``Indexer``), and the one place that picks Elasticsearch or the
embedded index from the configuration."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from retrieval.config import RetrievalConfig
from retrieval.errors import IndexMissing, RetrievalError
from retrieval.types import Document, Hit, SubQuery
from retrieval.vectors import Embedder


class Backend(Protocol):
    name: str

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        """One round trip for a chunk; a per-query failure comes back in its slot,
        a whole-chunk failure is raised. ``deadline`` (a ``time.monotonic()`` instant) bounds
        how long the backend may be waited on."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class Indexer(Protocol):
    """(Re)builds an index from documents, optionally with index-time vectors."""

    @property
    def where(self) -> str:
        """Names the index, for messages."""
        ...

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
        """Replaces the index's contents; returns how many documents were indexed."""
        ...


def open_backend(config: RetrievalConfig, vector_tag: str | None = None) -> Backend:
    """Elasticsearch behind a circuit breaker when ``es_url`` is set, else the embedded
    index. ``vector_tag``: use index-time vectors made by an engine with this tag."""
    if config.es_url:
        from retrieval.breaker import CircuitBreaker, GuardedBackend
        from retrieval.elastic import ElasticBackend, make_client

        client = make_client(
            config.es_url,
            timeout_s=config.es_timeout_s,
            connections=config.es_connections,
            api_key=config.es_api_key,
        )
        breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        backend = ElasticBackend(client, config.es_index, config.es_timeout_s, vector_tag)
        return GuardedBackend(backend, breaker)
    from retrieval.embedded import EmbeddedBackend

    return EmbeddedBackend(_index_dir(config), vector_tag)


def open_indexer(config: RetrievalConfig) -> Indexer:
    if config.es_url:
        from retrieval.elastic import ElasticIndexer

        return ElasticIndexer(config)
    from retrieval.embedded import EmbeddedIndexer

    return EmbeddedIndexer(_index_dir(config))


def _index_dir(config: RetrievalConfig) -> Path:
    if config.index_dir is None:
        raise IndexMissing("no embedded index directory configured")
    return config.index_dir


__all__ = ["Backend", "Indexer", "open_backend", "open_indexer"]
