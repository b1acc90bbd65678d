"""Configuration of the scoring side, one typed section per component, each default
defined here once. ``app/config.py`` nests these sections and fills them from flags and
env vars; every component takes only its own section.

Field metadata: ``help`` (shown by ``--help``), ``cli=False`` for tunables that are not
flags (measured constants, changed in code, not per deployment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from rerank.types import DocFields, FusionMethod, Passages, Precision, QueryPrep


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its help text (and ``secret=True``, ``cli=False`` markers)."""
    return field(default=default, metadata={"help": help, **extra})


def check_choices(section: object, **allowed: tuple[str, ...]) -> None:
    for name, choices in allowed.items():
        if getattr(section, name) not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}")


def check_at_least(section: object, low: float, *names: str) -> None:
    for name in names:
        if not getattr(section, name) >= low:  # NaN fails too
            raise ValueError(f"{name} must be >= {low:g}")


@dataclass(frozen=True)
class EngineConfig:
    """The scoring engine: which model, how it reads text, what it may use."""

    model_dir: Path | None = opt(
        None,
        "model directory (model.onnx, tokenizer.json, "
        "config.json); default: DATA_DIR/models/all-MiniLM-L6-v2",
    )
    threads: int = opt(0, "ONNX Runtime intra-op threads (0: every core this process may use)")
    spinning: bool = opt(
        False,
        "ONNX Runtime intra-op threads spin between ops (a lone query is faster on an idle "
        "machine; under load the CPU they burn is lost: off measured p99 22 vs 34 ms at 200 "
        "req/s, docs/BENCHMARKS.md)",
    )
    small_call_tokens: int = opt(
        32,
        "model calls of at most this many tokens (a query or two) run on a second, "
        "one-thread session: as fast as the pool for them at a third less CPU (0: off)",
    )
    max_length: int = opt(256, "max tokens per text fed to the model")
    precision: Precision = opt(
        "int8", "model weights: int8 (dynamic quantisation, VNNI) | fp32 (exact)"
    )
    cache_mb: float = opt(
        256.0,
        "cache size in MiB: document embeddings (bi-encoders) or query-document scores "
        "(cross-encoders); 0: off",
    )
    passages: Passages = opt(
        "first", "long documents: first passage | best passage (max over windows)"
    )
    passage_stride: int = opt(32, "overlap in tokens between passages")

    def __post_init__(self) -> None:
        check_choices(self, precision=get_args(Precision), passages=get_args(Passages))
        check_at_least(self, 0, "threads", "passage_stride", "cache_mb")
        if not 8 <= self.max_length <= 8192:
            raise ValueError("max_length must be within 8..8192")


@dataclass(frozen=True)
class BatchingConfig:
    """The micro-batcher: how big a shared model call may grow, and its timing margins."""

    batch_tokens: int = opt(
        4096, "most tokens in one model call (requests share calls; smaller cuts the budget finer)"
    )
    margin_s: float = opt(0.001, "kept free before a deadline: hand-off, the response", cli=False)
    safety: float = opt(
        0.15, "calls vary around the prediction (neighbours on the cores): pad it", cli=False
    )
    min_slice_s: float = opt(
        0.005, "a call may always take this long if its deadline allows", cli=False
    )
    backfill_slice_s: float = opt(0.005, "longest a backfill call may hold the model", cli=False)
    backfill_duty: float = opt(
        0.25, "most of the time backfill may use: the cores also serve the loop", cli=False
    )
    backfill_limit: int = opt(
        2048,
        "most cache-filling items kept after their request (late work); past it the oldest "
        "are dropped",
    )
    backfill_max_age_s: float = opt(
        1.0,
        "late work older than this is dropped, not run: after a burst the process is idle "
        "within about this long",
    )

    def __post_init__(self) -> None:
        check_at_least(self, 1, "batch_tokens")
        check_at_least(self, 0, "margin_s", "safety", "min_slice_s", "backfill_slice_s")
        check_at_least(self, 0, "backfill_limit", "backfill_max_age_s")
        if not 0.0 < self.backfill_duty <= 1.0:
            raise ValueError("backfill_duty must be within (0, 1]")


@dataclass(frozen=True)
class RankingConfig:
    """What text the model sees, and how its scores meet the retrieval scores."""

    fusion: FusionMethod = opt(
        "linear", "score fusion: linear | minmax | rrf | model (docs/QUALITY.md)"
    )
    fusion_weight: float = opt(0.5, "model weight of the linear fusion (0..1)")
    rrf_k: float = opt(60.0, "k of reciprocal-rank fusion")
    doc_fields: DocFields = opt(
        "title_text", "document text the model sees: title_text | text | title"
    )
    query_prep: QueryPrep = opt("raw", "query preparation: raw | clean")

    def __post_init__(self) -> None:
        check_choices(
            self,
            fusion=get_args(FusionMethod),
            doc_fields=get_args(DocFields),
            query_prep=get_args(QueryPrep),
        )
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError("fusion_weight must be within 0..1")


__all__ = [
    "BatchingConfig",
    "EngineConfig",
    "RankingConfig",
    "check_at_least",
    "check_choices",
    "opt",
]
