"""Plain data shared by the scoring side: what goes in (``Doc``, ``Seq``, the ``Candidate``
a caller ranks), what a model call returns and what it cost. Each stage's own result record
lives with its stage: ``scorer.Collected``, ``pipeline.ScoreOutcome``.

Kept apart from the engine so that configuration and callers can name these types without
loading ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np

Passages = Literal["first", "best"]
FusionMethod = Literal["linear", "minmax", "rrf", "model"]
DocFields = Literal["title_text", "text", "title"]
QueryPrep = Literal["raw", "clean"]
Precision = Literal["fp32", "int8"]
Seq = tuple[str, str | None]  # text, or (query, document) for a cross-encoder


@dataclass
class CallResult:
    """What one model call returns: one output row per input, in input order."""

    outputs: np.ndarray
    tokenize_s: float
    infer_s: float
    real_tokens: np.ndarray  # per input
    padded_tokens: np.ndarray  # per input: its share of the padded matrix


@dataclass(frozen=True)
class ItemResult:
    output: np.ndarray
    tokenize_s: float  # this item's share of its call
    infer_s: float
    real_tokens: int
    padded_tokens: int


@dataclass
class StageTimes:
    """Seconds spent per stage on behalf of one request (its share of shared model calls)."""

    tokenize: float = 0.0
    infer: float = 0.0
    real_tokens: int = 0
    padded_tokens: int = 0

    def add_item(self, r: ItemResult) -> None:
        self.tokenize += r.tokenize_s
        self.infer += r.infer_s
        self.real_tokens += r.real_tokens
        self.padded_tokens += r.padded_tokens


@dataclass(frozen=True)
class Doc:
    """What the model scores: the text it sees (already prepared and cut), not the
    retrieval hit it came from."""

    id: str  # how the caller names it in the results
    text: str  # what the model sees
    vector: np.ndarray | None = None  # index-time embedding, used as is (bi-encoders)
    cache_id: str = ""  # stable id for the embedding cache; "" keys on the text alone


class Candidate(Protocol):
    """A retrieval hit as scoring and ranking read it (``retrieval.types.Hit`` is one)."""

    @property
    def doc_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def score(self) -> float: ...


C = TypeVar("C", bound=Candidate)


__all__ = [
    "C",
    "Candidate",
    "Doc",
    "DocFields",
    "FusionMethod",
    "Passages",
    "Precision",
    "QueryPrep",
    "Seq",
    "StageTimes",
]
