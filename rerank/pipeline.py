"""Score candidates as retrieval chunks arrive, within the request's deadline.

Each chunk's candidates are cut into small batches in retrieval order and queued on the
engine at once, so scoring of chunk 1 runs while chunk 2 is still on the wire. At the
deadline we stop waiting: whatever was scored is ranked first, the rest follow in retrieval
order, and the outcome says so (the budget is a contract, not a hope).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from rerank.engine import QueryScorer, Scored, StageTimes
from rerank.errors import DeadlineExceeded


class Candidate(Protocol):
    @property
    def doc_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def score(self) -> float: ...


C = TypeVar("C", bound=Candidate)


class Chunk(Protocol[C]):
    @property
    def new(self) -> list[C]: ...
    @property
    def share(self) -> float: ...


TextOf = Callable[[Candidate], str]


@dataclass
class ScoreOutcome:
    model_scores: dict[str, float] = field(default_factory=dict)  # doc_id -> model score
    considered: list[str] = field(default_factory=list)  # doc ids sent for scoring
    times: StageTimes = field(default_factory=StageTimes)
    budget_exhausted: bool = False


class _Batches:
    """Queues candidates on the engine in batches and collects them up to the deadline."""

    def __init__(
        self, scorer: QueryScorer, text_of: TextOf, deadline: float | None, batch_size: int
    ) -> None:
        self.scorer, self.text_of, self.deadline = scorer, text_of, deadline
        self.batch_size = batch_size
        self.pending: list[tuple[list[str], asyncio.Task[Scored]]] = []
        self.out = ScoreOutcome()

    def submit(self, picked: Sequence[Candidate]) -> None:
        self.out.considered.extend(c.doc_id for c in picked)
        for i in range(0, len(picked), self.batch_size):
            part = picked[i : i + self.batch_size]
            texts = [self.text_of(c) for c in part]
            task = asyncio.ensure_future(self.scorer.score(texts, deadline=self.deadline))
            self.pending.append(([c.doc_id for c in part], task))

    async def collect(self) -> ScoreOutcome:
        tasks = [t for _, t in self.pending]
        if tasks:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            await asyncio.wait(tasks, timeout=timeout)
        out = self.out
        failure: BaseException | None = None
        for ids, task in self.pending:
            if not task.done():
                task.cancel()
                out.budget_exhausted = True
                continue
            exc = task.exception()
            if isinstance(exc, DeadlineExceeded):
                out.budget_exhausted = True
            elif exc is not None:
                failure = failure or exc
            else:
                result = task.result()
                out.times.add(result.times)
                out.model_scores.update(zip(ids, map(float, result.scores), strict=True))
        if failure is not None:
            raise failure
        return out


async def score_stream(
    scorer: QueryScorer,
    chunks: AsyncIterator[Chunk[C]],
    *,
    candidates: int,
    deadline: float | None,
    text_of: TextOf,
    batch_size: int = 8,
) -> ScoreOutcome:
    """Score up to ``candidates`` of the streamed hits; ``deadline`` is a ``time.monotonic()``
    instant, or None for no deadline."""
    batches = _Batches(scorer, text_of, deadline, batch_size)
    overflow: list[C] = []
    slots, share_left = candidates, 1.0
    async for chunk in chunks:
        # Split the remaining slots over the chunks still to come, by their share of the
        # queries; slots a chunk leaves unused (duplicates, few hits) pass on to later ones.
        if chunk.share >= share_left - 1e-9:
            quota = slots
        else:
            quota = math.ceil(slots * chunk.share / share_left)
        share_left -= chunk.share
        batches.submit(chunk.new[:quota])
        overflow.extend(chunk.new[quota:])
        slots -= min(quota, len(chunk.new))
    if slots > 0 and overflow:
        overflow.sort(key=lambda c: -c.score)
        batches.submit(overflow[:slots])
    return await batches.collect()


async def score_all(
    scorer: QueryScorer,
    docs: Sequence[Candidate],
    *,
    deadline: float | None,
    text_of: TextOf,
    batch_size: int = 32,
) -> ScoreOutcome:
    """The no-retrieval path (``/v1/rerank``): every document is a candidate."""
    batches = _Batches(scorer, text_of, deadline, batch_size)
    batches.submit(docs)
    return await batches.collect()
