"""The scoring engine: the one place where CPU work leaves the event loop.

It owns the ONNX Runtime session and a single thread executor. Tokenisation (Rust) and
inference (ONNX Runtime) both release the GIL, so while they run the loop keeps serving
sockets and waiting on Elasticsearch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from rerank.errors import DeadlineExceeded, ModelLoadError
from rerank.model import ModelKind, OnnxModel
from rerank.observe import EngineObserver, NullObserver
from rerank.tokenization import TextTokenizer

T = TypeVar("T")
Passages = Literal["first", "best"]


@dataclass
class StageTimes:
    """Seconds spent per stage on behalf of one request (summed over its model calls)."""

    tokenize: float = 0.0
    infer: float = 0.0
    real_tokens: int = 0
    padded_tokens: int = 0

    def add(self, other: StageTimes) -> None:
        self.tokenize += other.tokenize
        self.infer += other.infer
        self.real_tokens += other.real_tokens
        self.padded_tokens += other.padded_tokens


@dataclass
class Scored:
    scores: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)


class ScoringEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        max_length: int = 256,
        threads: int = 0,
        passages: Passages = "first",
        passage_stride: int = 32,
        observer: EngineObserver | None = None,
    ) -> None:
        threads = threads or _cpu_count()
        self.model_dir = model_dir
        self.model = OnnxModel(model_dir, intra_op_threads=threads)
        self.tokenizer = TextTokenizer(model_dir / "tokenizer.json", max_length)
        positions = _max_positions(model_dir)
        if positions is not None and max_length > positions:
            raise ModelLoadError(
                f"max_length {max_length} exceeds the model's {positions} positions"
            )
        self.passages = passages
        self.passage_stride = passage_stride
        self.observer: EngineObserver = observer or NullObserver()
        # One worker: the session already uses every core through its intra-op pool,
        # and a single queue keeps model calls from fighting over them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")

    @property
    def kind(self) -> ModelKind:
        return self.model.kind

    async def _offload(self, fn: Callable[[], T], deadline: float | None = None) -> T:
        queued = time.perf_counter()

        def guarded() -> T:
            self.observer.queue_wait(time.perf_counter() - queued)
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("batch skipped: request deadline passed while queued")
            return fn()

        return await asyncio.get_running_loop().run_in_executor(self._executor, guarded)

    def scorer(self, query: str) -> QueryScorer:
        return QueryScorer(self, query)

    async def score(self, query: str, docs: Sequence[str], deadline: float | None = None) -> Scored:
        return await self.scorer(query).score(docs, deadline)

    def _expand(self, docs: Sequence[str]) -> tuple[list[str], np.ndarray | None]:
        """``best`` passages: every window of each document; ``first``: the documents as they
        are (the tokenizer keeps the first ``max_length`` tokens)."""
        if self.passages == "first":
            return list(docs), None
        windows = self.tokenizer.split_passages(docs, self.passage_stride)
        owners = np.repeat(np.arange(len(docs)), [len(w) for w in windows])
        return [w for ws in windows for w in ws], owners

    @staticmethod
    def _reduce(scores: np.ndarray, owners: np.ndarray | None, n: int) -> np.ndarray:
        if owners is None:
            return scores
        best = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(best, owners, scores)
        return best

    def _bi(
        self, query: str | None, docs: Sequence[str]
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, StageTimes]:
        """Query vector (when asked), document vectors, passage owners."""
        t0 = time.perf_counter()
        flat, owners = self._expand(docs)
        batch = self.tokenizer.encode(([query] if query is not None else []) + flat)
        t1 = time.perf_counter()
        vecs = self.model.run(batch)
        t2 = time.perf_counter()
        times = StageTimes(t1 - t0, t2 - t1, batch.real_tokens, batch.padded_tokens)
        self.observer.batch(
            size=len(flat),
            real_tokens=batch.real_tokens,
            padded_tokens=batch.padded_tokens,
            seconds=t2 - t1,
        )
        if query is None:
            return None, vecs, owners, times
        return vecs[0], vecs[1:], owners, times

    def _cross(self, query: str, docs: Sequence[str]) -> tuple[np.ndarray, StageTimes]:
        t0 = time.perf_counter()
        flat, owners = self._expand(docs)
        batch = self.tokenizer.encode_pairs(query, flat)
        t1 = time.perf_counter()
        logits = self.model.run(batch)
        t2 = time.perf_counter()
        times = StageTimes(t1 - t0, t2 - t1, batch.real_tokens, batch.padded_tokens)
        self.observer.batch(
            size=len(flat),
            real_tokens=batch.real_tokens,
            padded_tokens=batch.padded_tokens,
            seconds=t2 - t1,
        )
        return self._reduce(logits, owners, len(docs)), times

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class QueryScorer:
    """Scores documents against one query, possibly in several calls as chunks arrive.

    For a bi-encoder the query is embedded once, inside the first document batch, so the
    first chunk costs one model call and later chunks reuse the vector.
    """

    def __init__(self, engine: ScoringEngine, query: str) -> None:
        self._engine = engine
        self._query = query
        self._qvec: np.ndarray | None = None
        self._lock = asyncio.Lock()

    async def score(self, docs: Sequence[str], deadline: float | None = None) -> Scored:
        """``deadline`` is a ``time.monotonic()`` instant after which queued work is skipped."""
        if not docs:
            return Scored(np.zeros(0, dtype=np.float32))
        eng = self._engine
        if eng.kind is ModelKind.CROSS_ENCODER:
            logits, times = await eng._offload(lambda: eng._cross(self._query, docs), deadline)
            return Scored(logits, times)
        async with self._lock:
            if self._qvec is None:
                qvec, dvecs, owners, times = await eng._offload(
                    lambda: eng._bi(self._query, docs), deadline
                )
                assert qvec is not None
                self._qvec = qvec
                return Scored(eng._reduce(dvecs @ qvec, owners, len(docs)), times)
        qvec = self._qvec
        _, dvecs, owners, times = await eng._offload(lambda: eng._bi(None, docs), deadline)
        return Scored(eng._reduce(dvecs @ qvec, owners, len(docs)), times)

    def relevance(self, score: float) -> float:
        """A score on the 0..1-ish scale rerank-API clients expect: sigmoid of a
        cross-encoder logit, cosine as is for bi-encoders."""
        if self._engine.kind is ModelKind.CROSS_ENCODER:
            return 0.5 * (1.0 + math.tanh(0.5 * score))  # sigmoid without overflow
        return score


def _max_positions(model_dir: Path) -> int | None:
    import json

    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = raw.get("max_position_embeddings") if isinstance(raw, dict) else None
    return int(value) if isinstance(value, int) else None


def _cpu_count() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["QueryScorer", "Scored", "ScoringEngine", "StageTimes"]
