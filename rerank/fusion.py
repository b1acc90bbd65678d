"""Combine retrieval and model scores into one ranking.

BM25 and the model are each wrong in different places (exact rare terms vs paraphrase), so
their combination usually beats both. Standard, untuned-by-design methods:

- ``linear`` (the default): ``w * model + (1 - w) * retrieval``, the model min-max normalised
  over the scored candidates and the retrieval score divided by its largest, from a floor of
  zero (the lowest BM25 score there is; a negative score lowers the floor). The retrieval
  part thus keeps its *relative* spread: scores 0.207-0.252 (one common word, or a filter)
  stay within 18% of each other and cannot outvote the model, while min-max would stretch
  that noise over the whole range. Constant scores (a ``term`` filter, ``match_all``) add
  nothing. Candidates found only by vector similarity carry a retrieval score of 0;
- ``minmax``: both scores min-max normalised, then blended (the earlier default; it lets a
  near-constant retrieval score decide the order, docs/QUALITY.md);
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


def _from_zero(x: np.ndarray) -> np.ndarray:
    """Scaled into [0, 1] by the largest score, from a floor of 0 (or the lowest score, if
    negative): what the scores say in proportion, not stretched."""
    if not x.size:
        return x
    floor = min(0.0, float(x.min()))
    span = float(x.max()) - floor
    return (x - floor) / span if span > 0 else np.zeros_like(x)


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
        return weight * _minmax(m) + (1.0 - weight) * _from_zero(r)
    if method == "minmax":
        return weight * _minmax(m) + (1.0 - weight) * _minmax(r)
    if method == "rrf":
        return weight / (rrf_k + _ranks(m)) + (1.0 - weight) / (rrf_k + _ranks(r))
    raise ValueError(f"unknown fusion method {method!r}")


__all__ = ["METHODS", "FusionMethod", "fuse"]
