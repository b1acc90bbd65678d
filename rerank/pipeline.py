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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from rerank.engine import QueryScorer, Scored, StageTimes
from rerank.errors import DeadlineExceeded


class Candidate(Protocol):
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


def text_for_model(c: Candidate) -> str:
    return f"{c.title}. {c.text}" if c.title else c.text


@dataclass
class Ranked(Generic[C]):
    candidate: C
    model_score: float | None


@dataclass
class RankOutcome(Generic[C]):
    ranked: list[Ranked[C]]
    times: StageTimes = field(default_factory=StageTimes)
    scored: int = 0
    considered: int = 0
    budget_exhausted: bool = False
    score_seconds: float = 0.0


async def rerank_stream(
    scorer: QueryScorer,
    chunks: AsyncIterator[Chunk[C]],
    *,
    candidates: int,
    deadline: float | None,
    batch_size: int = 8,
) -> RankOutcome[C]:
    """``deadline`` is a ``time.monotonic()`` instant, or None for no deadline."""
    pending: list[tuple[list[C], asyncio.Task[Scored]]] = []
    considered: list[C] = []
    overflow: list[C] = []
    slots, share_left = candidates, 1.0
    t0 = time.monotonic()

    def submit(picked: list[C]) -> None:
        considered.extend(picked)
        for i in range(0, len(picked), batch_size):
            part = picked[i : i + batch_size]
            texts = [text_for_model(c) for c in part]
            pending.append((part, asyncio.ensure_future(scorer.score(texts, deadline=deadline))))

    async for chunk in chunks:
        # Split the remaining slots over the chunks still to come, by their share of the
        # queries; slots a chunk leaves unused (duplicates, few hits) pass on to later ones.
        if chunk.share >= share_left - 1e-9:
            quota = slots
        else:
            quota = math.ceil(slots * chunk.share / share_left)
        share_left -= chunk.share
        submit(chunk.new[:quota])
        overflow.extend(chunk.new[quota:])
        slots -= min(quota, len(chunk.new))
    if slots > 0 and overflow:
        overflow.sort(key=lambda c: -c.score)
        submit(overflow[:slots])
    return await _collect(pending, considered, deadline, t0)


async def rerank_all(
    scorer: QueryScorer, docs: Sequence[C], *, deadline: float | None, batch_size: int = 32
) -> RankOutcome[C]:
    """The no-retrieval path (``/v1/rerank``): every document is a candidate."""
    pending: list[tuple[list[C], asyncio.Task[Scored]]] = []
    t0 = time.monotonic()
    for i in range(0, len(docs), batch_size):
        part = list(docs[i : i + batch_size])
        task = asyncio.ensure_future(
            scorer.score([text_for_model(c) for c in part], deadline=deadline)
        )
        pending.append((part, task))
    return await _collect(pending, list(docs), deadline, t0)


async def _collect(
    pending: list[tuple[list[C], asyncio.Task[Scored]]],
    considered: list[C],
    deadline: float | None,
    t0: float,
) -> RankOutcome[C]:
    tasks = [t for _, t in pending]
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    out: RankOutcome[C] = RankOutcome(ranked=[], considered=len(considered))
    scores: dict[int, float] = {}
    for part, task in pending:
        if not task.done():
            task.cancel()
            out.budget_exhausted = True
            continue
        exc = task.exception()
        if isinstance(exc, DeadlineExceeded):
            out.budget_exhausted = True
            continue
        if exc is not None:
            raise exc
        result = task.result()
        out.times.add(result.times)
        for c, s in zip(part, result.scores, strict=True):
            scores[id(c)] = float(s)
    out.score_seconds = time.monotonic() - t0
    out.scored = len(scores)
    scored = [Ranked(c, scores[id(c)]) for c in considered if id(c) in scores]
    scored.sort(key=lambda r: (-(r.model_score or 0.0), -r.candidate.score))
    rest = [Ranked(c, None) for c in considered if id(c) not in scores]
    rest.sort(key=lambda r: -r.candidate.score)
    out.ranked = scored + rest
    return out
