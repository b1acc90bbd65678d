"""Score candidates as retrieval chunks arrive, within the request's deadline.

Each chunk's candidates are queued on the engine in retrieval order as soon as the chunk
lands, so scoring of chunk 1 runs while chunk 2 is still on the wire. Retrieval has its own
deadline; the ranking budget starts when retrieval has answered (``rerank/due.py``). The
batcher serves work earliest deadline first and drops what can no longer finish in time. At
the deadline we stop waiting: whatever was scored is ranked first, the rest follow in
retrieval order, and the outcome says so (the budget is a contract, not a hope).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rerank.scorer import QueryScorer
from rerank.types import C, Doc, StageTimes


class Chunk(Protocol[C]):
    @property
    def new(self) -> list[C]: ...
    @property
    def share(self) -> float: ...
    @property
    def arrived(self) -> float: ...  # time.monotonic() when the chunk's answer came
    @property
    def extra(self) -> bool: ...  # scored on top of ``candidates`` (hybrid's kNN hits)


@dataclass
class ScoreOutcome:
    """This stage's result: the scorer's ``Collected`` put against what was asked (the
    candidates considered, whether the budget cut them) and when."""

    model_scores: dict[str, float] = field(default_factory=dict)  # doc_id -> model score
    considered: list[str] = field(default_factory=list)  # doc ids sent for scoring
    times: StageTimes = field(default_factory=StageTimes)
    budget_exhausted: bool = False
    retrieval_timed_out: bool = False  # retrieval's deadline passed with chunks unanswered
    retrieved_at: float | None = None  # time.monotonic() when retrieval answered
    cache_hits: int = 0
    index_vectors: int = 0
    wall_s: float = 0.0  # first submission to the last result collected


async def _finish(
    scorer: QueryScorer, considered: list[str], started: float | None
) -> ScoreOutcome:
    try:
        if considered:  # else only a query started early waits: nothing to score with it
            await scorer.wait()
    except asyncio.CancelledError:  # the client hung up: its queued model work goes too
        scorer.release(abandoned=True)
        raise
    finally:
        got = scorer.collect()
        scorer.release()
    if got.failure is not None:
        raise got.failure
    return ScoreOutcome(
        model_scores=got.scores,
        considered=considered,
        times=got.times,
        budget_exhausted=len(got.scores) < len(considered),
        cache_hits=got.cache_hits,
        index_vectors=got.index_vectors,
        wall_s=0.0 if started is None else time.perf_counter() - started,
    )


async def score_stream(
    scorer: QueryScorer,
    chunks: AsyncGenerator[Chunk[C], None],
    *,
    candidates: int,
    doc_of: Callable[[C], Doc],
    retrieval_deadline: float | None = None,
) -> ScoreOutcome:
    """Score up to ``candidates`` of the streamed hits. Chunks are awaited until
    ``retrieval_deadline`` (a ``time.monotonic()`` instant); then the scorer's budget starts
    (its :class:`~rerank.due.Due` is fixed) and scoring is awaited until it is spent. The
    query is queued before the first chunk is awaited: its encoding overlaps retrieval."""
    considered: list[str] = []
    overflow: list[C] = []
    slots, share_left = candidates, 1.0
    out_of_time = False
    started: float | None = None
    # When retrieval answered: the stream's end, less the time this loop spent submitting
    # after the last chunk came (ranking work, already inside the budget).
    last_arrival = submitted = 0.0

    async def submit(picked: Sequence[C]) -> None:
        nonlocal started
        started = started or time.perf_counter()
        considered.extend(c.doc_id for c in picked)
        await scorer.submit([doc_of(c) for c in picked])

    scorer.start()
    try:
        try:
            # Chunks that have not answered by retrieval's deadline are left behind (the
            # stream reports them lost) and we rank what we have.
            async with contextlib.aclosing(chunks) as stream, _until(retrieval_deadline):
                async for chunk in stream:
                    last_arrival = chunk.arrived
                    if chunk.extra:  # vector hits: a dot product each, no slot taken
                        await submit(chunk.new)
                        submitted = time.monotonic()
                        continue
                    # Split the remaining slots over the chunks still to come, by their share
                    # of the queries; slots a chunk leaves unused (duplicates, few hits) pass on.
                    if chunk.share >= share_left - 1e-9:
                        quota = slots
                    else:
                        quota = math.ceil(slots * chunk.share / share_left)
                    share_left -= chunk.share
                    await submit(chunk.new[:quota])
                    overflow.extend(chunk.new[quota:])
                    slots -= min(quota, len(chunk.new))
                    submitted = time.monotonic()
        except TimeoutError:
            out_of_time = True  # retrieval's deadline ended it: the budget starts now
        now = time.monotonic()
        retrieved_at = now if out_of_time else now - (submitted - last_arrival)
        scorer.due.fix(retrieved_at)  # the ranking budget started with the last answer
        if slots > 0 and overflow:
            overflow.sort(key=lambda c: -c.score)
            await submit(overflow[:slots])
    except BaseException as exc:
        scorer.release(abandoned=isinstance(exc, asyncio.CancelledError))
        raise
    out = await _finish(scorer, considered, started)
    out.retrieval_timed_out, out.retrieved_at = out_of_time, retrieved_at
    return out


def _until(deadline: float | None) -> asyncio.Timeout:
    """``asyncio.timeout_at`` for a ``time.monotonic()`` deadline (the loop's clock may have
    another origin, e.g. under uvloop)."""
    if deadline is None:
        return asyncio.timeout(None)
    loop = asyncio.get_running_loop()
    return asyncio.timeout_at(loop.time() + (deadline - time.monotonic()))


async def score_all(
    scorer: QueryScorer, docs: Sequence[C], *, doc_of: Callable[[C], Doc]
) -> ScoreOutcome:
    """The no-retrieval path (``/v1/rerank``): every document is a candidate."""
    return await score_docs(scorer, [doc_of(c) for c in docs])


async def score_docs(scorer: QueryScorer, docs: Sequence[Doc]) -> ScoreOutcome:
    """Every one of ``docs`` (named by ``Doc.id``) within the scorer's deadline."""
    started = time.perf_counter()
    try:
        await scorer.submit(docs)
    except BaseException as exc:
        scorer.release(abandoned=isinstance(exc, asyncio.CancelledError))
        raise
    return await _finish(scorer, [d.id for d in docs], started)
