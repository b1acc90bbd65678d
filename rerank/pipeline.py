"""Score candidates as retrieval chunks arrive, within the request's deadline.

Each chunk's candidates are cut into small batches in retrieval order and queued on the
engine at once, so scoring of chunk 1 runs while chunk 2 is still on the wire. At the
deadline we stop waiting: whatever was scored is ranked first, the rest follow in retrieval
order, and the outcome says so (the budget is a contract, not a hope).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
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
    retrieval_timed_out: bool = False


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

    async def cancel(self) -> None:
        """Drop queued batches (the request is gone or failed): they must not hold the one
        scoring thread for requests that can still make their deadline."""
        tasks = [t for _, t in self.pending if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(t for _, t in self.pending), return_exceptions=True)

    async def collect(self) -> ScoreOutcome:
        tasks = [t for _, t in self.pending]
        if tasks:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            await asyncio.wait(tasks, timeout=timeout)
        out = self.out
        failure: BaseException | None = None
        for ids, task in self.pending:
            if not task.done() or task.cancelled():
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
    chunks: AsyncGenerator[Chunk[C], None],
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
    out_of_time = False
    try:
        # The deadline covers retrieval too: chunks that have not answered by then are
        # left behind (the stream reports them lost) and we rank what we have.
        async with contextlib.aclosing(chunks) as stream, _until(deadline):
            async for chunk in stream:
                # Split the remaining slots over the chunks still to come, by their share of
                # the queries; slots a chunk leaves unused (duplicates, few hits) pass on.
                if chunk.share >= share_left - 1e-9:
                    quota = slots
                else:
                    quota = math.ceil(slots * chunk.share / share_left)
                share_left -= chunk.share
                batches.submit(chunk.new[:quota])
                overflow.extend(chunk.new[quota:])
                slots -= min(quota, len(chunk.new))
    except TimeoutError:
        out_of_time = True
    except BaseException:
        await batches.cancel()
        raise
    if slots > 0 and overflow and not out_of_time:
        overflow.sort(key=lambda c: -c.score)
        batches.submit(overflow[:slots])
    try:
        out = await batches.collect()
    except BaseException:
        await batches.cancel()
        raise
    out.retrieval_timed_out = out_of_time
    out.budget_exhausted = out.budget_exhausted or out_of_time
    return out


def _until(deadline: float | None) -> asyncio.Timeout:
    """``asyncio.timeout_at`` for a ``time.monotonic()`` deadline (the loop's clock may have
    another origin, e.g. under uvloop)."""
    if deadline is None:
        return asyncio.timeout(None)
    loop = asyncio.get_running_loop()
    return asyncio.timeout_at(loop.time() + (deadline - time.monotonic()))


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
    try:
        return await batches.collect()
    except BaseException:
        await batches.cancel()
        raise
