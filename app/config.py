"""One typed configuration object, built from CLI flags over ``RERANK_*`` env vars over
defaults, and passed down explicitly. Nothing deeper in the code reads the environment."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

from app.logs import LogFormat
from rerank.engine import Passages
from rerank.fusion import FusionMethod
from rerank.quantize import Precision
from rerank.text import DocFields, QueryPrep

ENV_PREFIX = "RERANK_"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Config:
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8080, "port to listen on")
    data_dir: Path = _opt(Path("var"), "where the default model and embedded index live")
    model_dir: Path | None = _opt(
        None,
        "model directory (model.onnx, tokenizer.json, "
        "config.json); default: DATA_DIR/models/all-MiniLM-L6-v2",
    )
    index_dir: Path | None = _opt(None, "embedded index directory; default: DATA_DIR/index/default")
    es_url: str | None = _opt(None, "Elasticsearch URL; unset means the embedded index")
    es_index: str = _opt("documents", "Elasticsearch index name")
    es_api_key: str | None = _opt(None, "Elasticsearch API key", secret=True)
    es_timeout_s: float = _opt(5.0, "Elasticsearch request timeout in seconds")
    es_connections: int = _opt(32, "pooled connections per Elasticsearch node")
    chunks: int = _opt(
        0,
        "concurrent _msearch chunks per request; 0: adaptive (scoring time / chunk round trip)",
    )
    threads: int = _opt(0, "ONNX Runtime intra-op threads (0: every core this process may use)")
    max_length: int = _opt(256, "max tokens per text fed to the model")
    precision: Precision = _opt(
        "int8", "model weights: int8 (dynamic quantisation, VNNI) | fp32 (exact)"
    )
    batch_tokens: int = _opt(
        4096, "most tokens in one model call (requests share calls; smaller cuts the budget finer)"
    )
    cache_mb: float = _opt(256.0, "document-embedding cache size in MiB (bi-encoders; 0: off)")
    budget_ms: float = _opt(20.0, "default per-request deadline in ms")
    candidates: int = _opt(20, "default number of candidates to rerank")
    retrieve: int = _opt(100, "default number of hits retrieved per sub-query (>= candidates)")
    fusion: FusionMethod = _opt("linear", "score fusion: linear | rrf | model")
    fusion_weight: float = _opt(0.5, "model weight of the linear fusion (0..1)")
    rrf_k: float = _opt(60.0, "k of reciprocal-rank fusion")
    doc_fields: DocFields = _opt(
        "title_text", "document text the model sees: title_text | text | title"
    )
    passages: Passages = _opt(
        "first", "long documents: first passage | best passage (max over windows)"
    )
    passage_stride: int = _opt(32, "overlap in tokens between passages")
    query_prep: QueryPrep = _opt("raw", "query preparation: raw | clean")
    size: int = _opt(10, "default number of hits returned by /v1/search")
    max_body_bytes: int = _opt(2 * 1024 * 1024, "largest request body accepted")
    max_documents: int = _opt(1000, "most documents in one /v1/rerank request")
    max_candidates: int = _opt(200, "largest `candidates` a request may ask for")
    max_subqueries: int = _opt(100, "most sub-queries in one /v1/search request")
    max_query_chars: int = _opt(4096, "longest query accepted, in characters")
    log_level: str = _opt("INFO", "logging level")
    shutdown_grace_s: float = _opt(
        3.0,
        "after SIGTERM, /readyz answers 503 at once but new connections are accepted this "
        "long (for load balancers to notice), then refused",
    )
    drain_timeout_s: float = _opt(
        25.0, "after the grace, how long requests in flight may take before they are cancelled"
    )
    # observability (#5)
    log_format: LogFormat = _opt(
        "json", "log lines: json (one object per line, for log pipelines) | text (terminals)"
    )
    # reliability (#7)
    max_in_flight: int = _opt(
        64,
        "requests admitted at once to /v1/search and /v1/rerank (retrieving, queued for the "
        "model or scoring); beyond it they get 503 with Retry-After at once",
    )
    retry_after_s: int = _opt(1, "Retry-After seconds sent with 503 answers")
    max_doc_chars: int = _opt(
        20_000, "document text longer than this is cut before scoring (flagged, not rejected)"
    )
    breaker_failures: int = _opt(
        5, "consecutive Elasticsearch failures that open the circuit breaker"
    )
    breaker_cooldown_s: float = _opt(
        5.0, "seconds the breaker stays open before one probe request is let through"
    )
    api_keys: str | None = _opt(
        None, "comma-separated bearer API keys; unset (and no file): no auth", secret=True
    )
    api_keys_file: Path | None = _opt(
        None, "file with one API key per line (a mounted secret), added to API_KEYS"
    )
    metrics_auth: bool = _opt(True, "with API keys set, /metrics needs a key too")

    def __post_init__(self) -> None:
        choices = {
            "fusion": get_args(FusionMethod),
            "doc_fields": get_args(DocFields),
            "passages": get_args(Passages),
            "query_prep": get_args(QueryPrep),
            "precision": get_args(Precision),
            "log_format": get_args(LogFormat),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        positive = (
            "batch_tokens",
            "candidates",
            "retrieve",
            "size",
            "max_body_bytes",
            "max_documents",
            "max_candidates",
            "max_subqueries",
            "max_query_chars",
            "es_connections",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.threads < 0 or self.passage_stride < 0 or not 0 <= self.port <= 65535:
            raise ValueError("threads and passage_stride must be >= 0, port within 0..65535")
        if not 8 <= self.max_length <= 8192:
            raise ValueError("max_length must be within 8..8192")
        if self.cache_mb < 0 or self.chunks < 0:
            raise ValueError("cache_mb and chunks must be >= 0")
        if self.budget_ms <= 0 or self.es_timeout_s <= 0:
            raise ValueError("budget_ms and es_timeout_s must be > 0")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError("fusion_weight must be within 0..1")
        if self.shutdown_grace_s < 0 or self.drain_timeout_s < 0:
            raise ValueError("shutdown_grace_s and drain_timeout_s must be >= 0")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"log_level must be a logging level name, not {self.log_level!r}")
        for name in ("max_in_flight", "max_doc_chars", "breaker_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.retry_after_s < 0 or self.breaker_cooldown_s < 0:
            raise ValueError("retry_after_s and breaker_cooldown_s must be >= 0")

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models" / "all-MiniLM-L6-v2"

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir or self.data_dir / "index" / "default"

    @property
    def default_corpus_dir(self) -> Path:
        return self.data_dir / "corpus" / "stdlib"


def _convert(raw: str, annotation: str) -> Any:
    if annotation == "bool":
        if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ValueError("expected true or false")
        return raw.lower() in {"1", "true", "yes", "on"}
    if annotation.startswith("int"):
        return int(raw)
    if annotation.startswith("float"):
        return float(raw)
    if annotation.startswith("Path"):
        return Path(raw)
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per config field; env var names appear in ``--help``."""
    for f in fields(Config):
        env = ENV_PREFIX + f.name.upper()
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {env}; default {f.default})",
        )


def from_sources(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> Config:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Config):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _convert(str(raw), str(f.type))
        except ValueError as exc:
            raise SystemExit(f"bad value for {f.name}: {raw!r} ({exc})") from exc
    try:
        return dataclasses.replace(Config(), **values)
    except ValueError as exc:
        raise SystemExit(f"bad configuration: {exc}") from exc
