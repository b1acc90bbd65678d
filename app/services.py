"""Builds the long-lived parts (scoring engine, retrieval backend) from the config; each
gets only its own sections."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from app.config import Config
from rerank.engine import ScoringEngine
from rerank.observe import EngineObserver
from retrieval.backend import Backend
from retrieval.errors import IndexMismatch, KnnUnavailable, RetrievalError
from retrieval.factory import open_backend
from retrieval.planner import ChunkPlanner

log = logging.getLogger("app")


@dataclass
class Services:
    config: Config
    engine: ScoringEngine
    backend: Backend
    planner: ChunkPlanner = field(default_factory=ChunkPlanner)

    def __post_init__(self) -> None:
        self.planner.fixed = self.config.retrieval.chunks

    async def close(self) -> None:
        await self.backend.close()
        await self.engine.aclose()


def open_engine(config: Config, observer: EngineObserver | None = None) -> ScoringEngine:
    return ScoringEngine(config.engine_config(), config.batching, observer=observer)


async def open_services(
    config: Config, observer: EngineObserver | None = None, es_tracer: Any = None
) -> Services:
    """``es_tracer``: the Elasticsearch client's spans go to it (None: tracing off)."""
    # Loading the ONNX session takes a few hundred ms of CPU: keep it off the loop.
    engine = await asyncio.to_thread(open_engine, config, observer)
    try:
        tag = await asyncio.to_thread(engine.vector_tag, config.ranking.doc_fields)
        backend = open_backend(config.retrieval_config(), tag, es_tracer)
    except BaseException:
        await engine.aclose()
        raise
    try:
        await backend.check()
        if config.retrieval.hybrid:
            await backend.check_knn()
    except (IndexMismatch, KnnUnavailable):
        await backend.close()
        await engine.aclose()
        raise
    except RetrievalError as exc:
        # Unreachable: serve anyway, unready (/readyz 503) until the cluster answers; the
        # check then runs on the next /readyz. No index yet: searches say index_missing.
        log.warning("could not check the index now: %s", exc)
    return Services(config, engine, backend)
