"""The final order: scored candidates by fused score, then the unscored in retrieval order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic

import numpy as np

from rerank.config import RankingConfig
from rerank.fusion import FusionMethod, fuse
from rerank.types import C

_DEFAULT = RankingConfig()


@dataclass(frozen=True)
class Ranked(Generic[C]):
    candidate: C
    model_score: float | None
    score: float | None  # fused; None when the candidate was not scored


def rank(
    union: Sequence[C],
    model_scores: Mapping[str, float],
    method: FusionMethod,
    weight: float = _DEFAULT.fusion_weight,
    rrf_k: float = _DEFAULT.rrf_k,
) -> list[Ranked[C]]:
    """``union`` is every candidate, best retrieval score first."""
    scored = [c for c in union if c.doc_id in model_scores]
    model = [model_scores[c.doc_id] for c in scored]
    fused = fuse([c.score for c in scored], model, method, weight, rrf_k)
    order = np.argsort(-fused, kind="stable")
    head = [Ranked(scored[i], model[i], float(fused[i])) for i in order]
    tail = [Ranked(c, None, None) for c in union if c.doc_id not in model_scores]
    return head + tail
