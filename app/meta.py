"""What one scoring request did, in one object (like text-embeddings-inference's
``ResponseMetadata``).

The orchestration (``app/search.py``) fills it; the response body (``timings``,
``partial``), the ``Server-Timing`` header, the access line and the metrics all read it,
so they cannot disagree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rerank.due import Due
from rerank.pipeline import ScoreOutcome
from retrieval.types import RetrievalReport


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass
class RequestMeta:
    t0: float  # time.monotonic() when the request arrived
    due: Due  # when the answer is due (a search's floats until retrieval answered)
    retrieval_deadline: float | None = None  # time.monotonic(); None: none (or no retrieval)
    retrieved_at: float | None = None  # time.monotonic() when retrieval answered
    budget_ms: float | None = None  # the ranking budget asked for (a rerank's: its deadline)
    stages: dict[str, float] = field(default_factory=dict)  # seconds, in pipeline order
    candidates: int = 0  # sent for scoring
    scored: int = 0  # scored by the deadline
    budget_exhausted: bool = False
    backend: str | None = None  # retrieval backend; None on /v1/rerank
    chunks: int = 0
    lost: int = 0  # retrieval parts lost
    scored_at: float | None = None  # time.perf_counter() when the scores were in
    total_s: float | None = None  # fixed by the first call to timings_ms()

    @classmethod
    def start(cls, budget_ms: float | None, t0: float | None = None) -> RequestMeta:
        """The one place budgets become deadlines (docs/ARCHITECTURE.md, "Deadlines"). No
        retrieval (the rerank routes): the budget counts from arrival. None: no bound."""
        t0 = time.monotonic() if t0 is None else t0
        due = Due(math.inf if budget_ms is None else t0 + budget_ms / 1000.0)
        return cls(t0, due, budget_ms=budget_ms)

    @classmethod
    def search(
        cls,
        budget_ms: float | None,
        retrieval_ms: float | None,
        deadline_ms: float | None = None,
        t0: float | None = None,
    ) -> RequestMeta:
        """A search: retrieval is bounded by ``retrieval_ms`` from arrival; the ranking
        budget ``budget_ms`` starts when retrieval has answered; the caller's end-to-end
        ``deadline_ms`` caps both. None: no bound."""
        t0 = time.monotonic() if t0 is None else t0
        end = math.inf if deadline_ms is None else t0 + deadline_ms / 1000.0
        budget_s = None if budget_ms is None else budget_ms / 1000.0
        retrieval = end if retrieval_ms is None else min(end, t0 + retrieval_ms / 1000.0)
        retrieval_deadline = None if math.isinf(retrieval) else retrieval
        return cls(t0, Due(budget_s=budget_s, end=end), retrieval_deadline, budget_ms=budget_ms)

    @property
    def deadline(self) -> float | None:
        """When the answer is due (``time.monotonic()``), once known; None: no bound."""
        return self.due.deadline

    def record(
        self,
        scoring: ScoreOutcome,
        report: RetrievalReport | None = None,
        backend: str | None = None,
    ) -> None:
        if report is not None:
            self.stages["retrieve"] = report.seconds
            if report.knn_seconds is not None:  # hybrid: the query's encoding + kNN search
                self.stages["knn"] = report.knn_seconds
            self.retrieved_at = scoring.retrieved_at
            self.chunks, self.lost, self.backend = report.chunks, len(report.lost), backend
        self.stages["tokenize"] = scoring.times.tokenize
        self.stages["infer"] = scoring.times.infer
        self.candidates = len(scoring.considered)
        self.scored = len(scoring.model_scores)
        self.budget_exhausted = scoring.budget_exhausted
        self.scored_at = time.perf_counter()

    @property
    def partial(self) -> bool:
        """Some of the answer is missing: a retrieval part was lost or the budget cut
        scoring."""
        return self.budget_exhausted or self.lost > 0

    def timings_ms(self) -> dict[str, float]:
        """Stage durations and the total so far, in ms: the body's ``timings`` and the
        ``Server-Timing`` header. The total is fixed on the first call, so both agree.
        ``ranking`` (searches) is what the budget bounds: the answer less retrieval."""
        if self.total_s is None:
            self.total_s = time.monotonic() - self.t0
        out = {k: ms(v) for k, v in self.stages.items()}
        if self.retrieved_at is not None:
            out["ranking"] = ms(max(0.0, self.total_s - (self.retrieved_at - self.t0)))
        out["total"] = ms(self.total_s)
        return out
