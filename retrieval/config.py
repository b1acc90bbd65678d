"""Configuration of retrieval (Elasticsearch or the embedded index, fan-out, breaker), each
default defined here once. ``app/config.py`` nests this section and fills it from flags and
env vars (field metadata: ``help`` for ``--help``, ``secret`` to keep it out of logs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class RetrievalConfig:
    index_dir: Path | None = _opt(None, "embedded index directory; default: DATA_DIR/index/default")
    es_url: str | None = _opt(None, "Elasticsearch URL; unset means the embedded index")
    es_index: str = _opt("documents", "Elasticsearch index name")
    es_title_field: str = _opt(
        "title", "Elasticsearch field shown as a hit's title and read by the model"
    )
    es_text_field: str = _opt(
        "text",
        "Elasticsearch field with the document text the model reads; plain-text sub-queries "
        "match both fields",
    )
    es_api_key: str | None = _opt(None, "Elasticsearch API key", secret=True)
    es_timeout_s: float = _opt(5.0, "Elasticsearch request timeout in seconds")
    # A healthy cluster answers in 10-100 ms (a slow shard, a GC pause: a few hundred). Past
    # a second a frontend has usually given up, and an overloaded cluster is better told
    # by a 504 than waited on; a caller's X-Request-Deadline-Ms caps it per request.
    retrieval_timeout_ms: float = _opt(
        1000.0,
        "the most a search waits for retrieval, in ms (its own bound: the ranking budget "
        "starts once retrieval has answered); chunks not answered by then are reported lost, "
        "and with none answered the search is a 504",
    )
    es_connections: int = _opt(32, "pooled connections per Elasticsearch node")
    chunks: int = _opt(
        0,
        "concurrent _msearch chunks per request; 0: adaptive (scoring time / chunk round trip)",
    )
    retrieve: int = _opt(
        100,
        "default number of hits each sub-query retrieves and reports (>= candidates); the "
        "main query fetches only the max(candidates, size) that ranking reads",
    )
    hybrid: bool = _opt(
        False,
        "hybrid retrieval: the query's vector also retrieves the knn_k documents whose stored "
        "vectors are nearest (bi-encoders with index-time vectors; on Elasticsearch an indexed "
        "dense_vector); they are scored on top of the candidates (docs/QUALITY.md)",
    )
    knn_k: int = _opt(20, "documents the kNN part of hybrid retrieval finds")
    # Measured (docs/QUALITY.md, hybrid retrieval; python -m profiles.ann), one core: exact
    # kNN takes 1.3 ms at 10,000 vectors, 3.3 at 20,000, 17 at 100,000 (on the executor BM25
    # searches share); the HNSW index answers 100,000 in 0.35 ms with recall@20 0.999.
    knn_exact_max: int = _opt(
        10_000,
        "the embedded index's kNN is exact over up to this many stored vectors; past it an "
        "HNSW index (faiss, built with the index and kept beside it) answers, approximately",
    )
    knn_ef: int = _opt(
        128,
        "candidates an HNSW kNN search keeps (at least knn_k): recall against time (ef 64: "
        "0.995 at 0.20 ms; 128: 0.999 at 0.35 ms; 256: 1.0 at 0.7 ms, 100,000 vectors)",
        cli=False,
    )
    breaker_failures: int = _opt(
        5, "consecutive Elasticsearch failures that open the circuit breaker"
    )
    breaker_cooldown_s: float = _opt(
        5.0, "seconds the breaker stays open before one probe request is let through"
    )
    index_stall: str | None = _opt(
        None,
        "test hook (retrieval/stall.py): an index build stops at this stage (start, load, "
        "switch), says so on stderr and waits to be killed",
    )

    def __post_init__(self) -> None:
        for name in ("es_connections", "retrieve", "breaker_failures", "knn_k", "knn_ef"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.chunks < 0 or self.breaker_cooldown_s < 0 or self.knn_exact_max < 0:
            raise ValueError("chunks, breaker_cooldown_s and knn_exact_max must be >= 0")
        for name in ("es_timeout_s", "retrieval_timeout_ms"):
            value = getattr(self, name)
            if not (0 < value < math.inf):  # NaN fails too
                raise ValueError(f"{name} must be a finite number > 0, not {value}")
        if self.es_url:
            url = urlsplit(self.es_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(
                    f"es_url must be an http(s) URL such as http://localhost:9200, not "
                    f"{self.es_url!r}"
                )


__all__ = ["RetrievalConfig"]
