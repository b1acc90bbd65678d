"""Builds the long-lived parts (scoring engine, retrieval backend) from the config."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.config import Config
from rerank.engine import ScoringEngine
from rerank.observe import EngineObserver
from retrieval.embedded import EmbeddedBackend
from retrieval.fanout import Backend
from retrieval.planner import ChunkPlanner

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch


@dataclass
class Services:
    config: Config
    engine: ScoringEngine
    backend: Backend
    planner: ChunkPlanner = field(default_factory=ChunkPlanner)

    def __post_init__(self) -> None:
        self.planner.fixed = self.config.chunks

    async def close(self) -> None:
        await self.backend.close()
        await self.engine.aclose()


def indexing_client(config: Config) -> AsyncElasticsearch:
    """A client for bulk loads: same cluster and key, a timeout fit for ``_bulk``."""
    from retrieval.elastic import make_client

    assert config.es_url, "indexing_client needs es_url"
    return make_client(
        config.es_url, timeout_s=max(config.es_timeout_s, 60.0), api_key=config.es_api_key
    )


def open_backend(config: Config, vector_tag: str | None = None) -> Backend:
    """``vector_tag``: use index-time vectors made by an engine with this tag."""
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
    return EmbeddedBackend(config.resolved_index_dir, vector_tag)


def open_engine(config: Config, observer: EngineObserver | None = None) -> ScoringEngine:
    return ScoringEngine(
        config.resolved_model_dir,
        max_length=config.max_length,
        threads=config.threads,
        passages=config.passages,
        passage_stride=config.passage_stride,
        observer=observer,
        precision=config.precision,
        batch_tokens=config.batch_tokens,
        cache_mb=config.cache_mb,
    )


async def open_services(config: Config, observer: EngineObserver | None = None) -> Services:
    # Loading the ONNX session takes a few hundred ms of CPU: keep it off the loop.
    engine = await asyncio.to_thread(open_engine, config, observer)
    try:
        tag = await asyncio.to_thread(engine.vector_tag, config.doc_fields)
        backend = open_backend(config, tag)
    except BaseException:
        await engine.aclose()
        raise
    return Services(config, engine, backend)
