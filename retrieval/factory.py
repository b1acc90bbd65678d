"""The one place that picks Elasticsearch or the embedded index from the configuration
(apart from the protocols in ``retrieval/backend.py``, which the backends import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.backend import Backend, Indexer
from retrieval.config import RetrievalConfig
from retrieval.errors import IndexMissing
from retrieval.vectors import stored_tag

TITLE, TEXT = "title", "text"  # the embedded index's fields (retrieval/embedded_index.py)


def source_fields(config: RetrievalConfig) -> tuple[str, str]:
    """The (title, text) fields documents are read from: the configured Elasticsearch
    fields, or the embedded index's fixed ones."""
    if config.es_url:
        return (config.es_title_field, config.es_text_field)
    return (TITLE, TEXT)


def vector_tag(config: RetrievalConfig, engine_tag: str | None) -> str | None:
    """The tag stored vectors must carry to be used with this configuration (None: none)."""
    return None if engine_tag is None else stored_tag(engine_tag, source_fields(config))


def open_backend(
    config: RetrievalConfig, engine_tag: str | None = None, tracer: Any = None
) -> Backend:
    """Elasticsearch behind a circuit breaker when ``es_url`` is set, else the embedded
    index. ``engine_tag``: use index-time vectors made by an engine with this tag from the
    configured source fields (``vector_tag``). ``tracer``: an OpenTelemetry tracer for the
    Elasticsearch client's spans (None: off)."""
    tag = vector_tag(config, engine_tag)
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
        fields = source_fields(config)
        backend = ElasticBackend(client, config.es_index, config.es_timeout_s, tag, fields, tracer)
        return GuardedBackend(backend, breaker)
    from retrieval.embedded import EmbeddedBackend

    return EmbeddedBackend(index_dir(config), tag)


def open_indexer(config: RetrievalConfig) -> Indexer:
    if config.es_url:
        from retrieval.elastic_index import ElasticIndexer

        return ElasticIndexer(config)
    from retrieval.embedded_index import EmbeddedIndexer

    return EmbeddedIndexer(index_dir(config))


def index_dir(config: RetrievalConfig) -> Path:
    if config.index_dir is None:
        raise IndexMissing("no embedded index directory configured")
    return config.index_dir
