"""Every document against one query on the cold path (no cache, no request around it), its
scores aligned with the documents: what benchmarks (profiles/) and tests measure and
compare. The service never imports it; the engine knows nothing of it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerank.pipeline import score_docs
from rerank.scorer import EngineView, QueryScorer
from rerank.types import Doc, StageTimes


@dataclass
class Scored:
    """This helper's result: ``ScoreOutcome``'s scores as an array."""

    scores: np.ndarray  # aligned with the documents; NaN where the deadline cut it
    times: StageTimes


async def score_cold(
    engine: EngineView, query: str, docs: Sequence[str], deadline: float | None = None
) -> Scored:
    """Every document against one query without the cache (``deadline``: a
    ``time.monotonic()`` instant, None: none)."""
    scorer = QueryScorer(engine, query, deadline, use_cache=False)
    got = await score_docs(scorer, [Doc(str(i), t) for i, t in enumerate(docs)])
    scores = got.model_scores
    out = np.array([scores.get(str(i), math.nan) for i in range(len(docs))], np.float32)
    return Scored(out, got.times)


__all__ = ["Scored", "score_cold"]
