"""Combine retrieval and model scores into one ranking.

BM25 and the model are each wrong in different places (exact rare terms vs paraphrase), so
their combination usually beats both. Two standard, untuned-by-design methods:

- ``linear``: min-max normalise each score over the scored candidates, then blend
  ``w * model + (1 - w) * retrieval``;
- ``rrf``: reciprocal-rank fusion, ``w/(k + rank_model) + (1 - w)/(k + rank_retrieval)``;
  scale-free, so it needs no normalisation and behaves the same on any collection
  (``w = 0.5`` is the classic unweighted RRF);
- ``model``: the model score alone (no fusion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np

from rerank.config import RankingConfig
from rerank.types import FusionMethod

METHODS: tuple[FusionMethod, ...] = get_args(FusionMethod)
_DEFAULT = RankingConfig()


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, best (highest) first; ties broken by position (retrieval order)."""
    order = np.argsort(-x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    return ranks


def fuse(
    retrieval: Sequence[float],
    model: Sequence[float],
    method: FusionMethod,
    weight: float = _DEFAULT.fusion_weight,
    rrf_k: float = _DEFAULT.rrf_k,
) -> np.ndarray:
    """Fused scores, aligned with the inputs; higher is better."""
    r = np.asarray(retrieval, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    if method == "model":
        return m
    if method == "linear":
        return weight * _minmax(m) + (1.0 - weight) * _minmax(r)
    if method == "rrf":
        return weight / (rrf_k + _ranks(m)) + (1.0 - weight) / (rrf_k + _ranks(r))
    raise ValueError(f"unknown fusion method {method!r}")


__all__ = ["METHODS", "FusionMethod", "fuse"]
