"""The one place that picks Elasticsearch or the embedded index from the configuration
(apart from the protocols in ``retrieval/backend.py``, which the backends import): search
(``open_backend``), indexing, embedding and eval's datasets (``open_indexer``,
``eval_index``), and what only a cluster does (``open_migrator``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.backend import Backend, Indexer
from retrieval.config import RetrievalConfig
from retrieval.errors import IndexMissing, SetupError
from retrieval.stall import stall_at
from retrieval.vectors import stored_tag

if TYPE_CHECKING:
    from retrieval.elastic.indexer import ElasticIndexer
    from retrieval.embedded.ann import AnnConfig

TITLE, TEXT = "title", "text"  # the embedded index's fields (retrieval/embedded/index.py)


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
        from retrieval.elastic.search import ElasticBackend, make_client

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
    from retrieval.embedded.search import EmbeddedBackend

    return EmbeddedBackend(index_dir(config), tag, ann_config(config))


def open_indexer(config: RetrievalConfig) -> Indexer:
    """The configured index to load (``app index``), embed (``app embed``) or fill with an
    eval dataset; builds stall where ``index_stall`` says (retrieval/stall.py)."""
    if config.es_url:
        return open_migrator(config)
    from retrieval.embedded.index import EmbeddedIndexer

    return EmbeddedIndexer(index_dir(config), stall_at(config.index_stall), ann_config(config))


def ann_config(config: RetrievalConfig) -> AnnConfig:
    """When the embedded index's kNN goes through its HNSW index (retrieval/embedded/ann.py)."""
    from retrieval.embedded.ann import AnnConfig

    return AnnConfig(exact_max=config.knn_exact_max, ef=config.knn_ef)


def open_migrator(config: RetrievalConfig) -> ElasticIndexer:
    """The configured Elasticsearch index, for what only a cluster does (``app migrate``
    copies a team's index); ``SetupError`` without ``es_url``."""
    if not config.es_url:
        raise SetupError("it copies an Elasticsearch index: set --es-url")
    from retrieval.elastic.indexer import ElasticIndexer

    return ElasticIndexer(config)


def eval_index(
    config: RetrievalConfig, data_dir: Path, dataset: Path, vectors: bool = False
) -> RetrievalConfig:
    """Where ``app eval`` loads a dataset: never the serving index by accident. On
    Elasticsearch its own index unless ``--es-index`` names one; embedded, its own directory
    under ``data_dir/index`` unless ``--index-dir`` names one. ``vectors``: the one with
    index-time vectors (a name of its own)."""
    suffix = "-vectors" if vectors else ""
    if config.es_url:
        if config.es_index == RetrievalConfig.es_index:
            name = f"eval-{(dataset.name or 'dataset').lower()}{suffix}"
            return dataclasses.replace(config, es_index=name)
        return config
    if config.index_dir is None:
        where = data_dir / "index" / f"eval-{dataset.resolve().name}{suffix}"
        return dataclasses.replace(config, index_dir=where)
    return config


def index_dir(config: RetrievalConfig) -> Path:
    if config.index_dir is None:
        raise IndexMissing("no embedded index directory configured")
    return config.index_dir
