"""Cross-request micro-batching: every request's texts go into shared model calls.

One loop owns the model. Requests queue *items* (one text, or one query–document pair)
with their deadline. Whenever the model is free the loop takes what is queued, earliest
deadline first, up to a token budget, and runs it at once: an idle engine serves a lone
request with no added wait, a busy one folds everything that arrived during the current
call into the next. A call never grows past what the cost model says will finish before
the earliest deadline in it, and items that can no longer make their deadline are dropped
(cancelled) instead of stealing time from requests that still can.

Items marked ``keep_late`` (document embeddings, which fill the cache) are not dropped:
they move to a bounded backfill queue that runs only when nothing live is waiting.

A model call that fails is retried item by item, so one poisoned input fails only its own
request, and the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from rerank.cost import CostModel
from rerank.errors import InferenceError
from rerank.observe import EngineObserver

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


@dataclass(eq=False)
class _Item:
    seq: Seq
    tokens: int
    deadline: float
    order: int
    future: asyncio.Future[ItemResult]
    keep_late: bool
    queued_at: float = field(default_factory=time.perf_counter)


def _consume(f: asyncio.Future[ItemResult]) -> None:
    # Results may arrive after the request stopped listening; mark errors as seen.
    if not f.cancelled():
        f.exception()


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[list[Seq]], CallResult],
        executor: Executor,
        cost: CostModel,
        estimate: Callable[[Seq], int],
        observer: EngineObserver,
        *,
        max_tokens: int = 4096,
        backfill_limit: int = 2048,
    ) -> None:
        self._run, self._executor, self._cost = run, executor, cost
        self._estimate, self._observer = estimate, observer
        self.max_tokens = max_tokens
        self._queue: list[_Item] = []
        self._backfill: deque[_Item] = deque()
        self._backfill_limit = backfill_limit
        self._order = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy_until = 0.0  # predicted end of the call in progress (monotonic)
        self.calls = 0

    def submit(
        self, seqs: Sequence[Seq], deadline: float | None, keep_late: bool = False
    ) -> list[asyncio.Future[ItemResult]]:
        """Queue items; ``deadline`` is a ``time.monotonic()`` instant (None: none)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # First use, or a new event loop (tests run one per test): start the loop here.
            self._queue.clear()
            self._backfill.clear()
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop(), name="micro-batcher")
        assert self._wake is not None
        due = math.inf if deadline is None else deadline
        futures = []
        for seq in seqs:
            fut: asyncio.Future[ItemResult] = loop.create_future()
            fut.add_done_callback(_consume)
            self._order += 1
            self._queue.append(_Item(seq, self._estimate(seq), due, self._order, fut, keep_late))
            futures.append(fut)
        self._wake.set()
        return futures

    def backlog_s(self) -> float:
        """Predicted seconds until work queued now would start."""
        now = time.monotonic()
        tokens = sum(i.tokens for i in self._queue if not i.future.done())
        queued = self._cost.predict(tokens) if tokens else 0.0
        return max(0.0, self._busy_until - now) + queued

    def predict(self, tokens: int) -> float:
        return self._cost.predict(tokens)

    def estimate(self, seq: Seq) -> int:
        return self._estimate(seq)

    def _pick(self) -> list[_Item]:
        now = time.monotonic()
        live: list[_Item] = []
        for item in self._queue:
            if item.future.done():  # the request gave up on it
                continue
            if now + self._cost.predict(item.tokens) > item.deadline:
                self._drop(item)
            else:
                live.append(item)
        live.sort(key=lambda i: (i.deadline, i.order))
        batch: list[_Item] = []
        tokens = 0
        for item in live:
            if batch and (
                tokens + item.tokens > self.max_tokens
                or now + self._cost.predict(tokens + item.tokens) > batch[0].deadline
            ):
                break
            batch.append(item)
            tokens += item.tokens
        taken = {id(i) for i in batch}
        self._queue = [i for i in live if id(i) not in taken]
        if batch:
            return batch
        while self._backfill and tokens < self.max_tokens:
            item = self._backfill.popleft()
            if not item.future.done():
                batch.append(item)
                tokens += item.tokens
        return batch

    def _drop(self, item: _Item) -> None:
        if item.keep_late:
            self._backfill.append(item)
            while len(self._backfill) > self._backfill_limit:
                self._backfill.popleft().future.cancel()
        else:
            item.future.cancel()

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = self._pick()
                if not batch:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                started = time.perf_counter()
                for item in batch:
                    self._observer.queue_wait(started - item.queued_at)
                self._busy_until = time.monotonic() + self._cost.predict(
                    sum(i.tokens for i in batch)
                )
                await self._call(loop, batch)
                self._busy_until = 0.0
        except asyncio.CancelledError:
            for item in [*self._queue, *self._backfill]:
                item.future.cancel()
            raise

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        try:
            res = await loop.run_in_executor(self._executor, self._run, [i.seq for i in batch])
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # Find the culprit: each item alone, so the others still get their answer.
            for item in batch:
                if not item.future.done():
                    await self._call(loop, [item])
            return
        self.calls += 1
        padded = int(res.padded_tokens.sum())
        self._cost.observe(padded, res.infer_s)
        self._observer.batch(
            size=len(batch),
            real_tokens=int(res.real_tokens.sum()),
            padded_tokens=padded,
            seconds=res.infer_s,
        )
        share = res.padded_tokens / max(padded, 1)
        for k, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(
                    ItemResult(
                        res.outputs[k],
                        res.tokenize_s * float(share[k]),
                        res.infer_s * float(share[k]),
                        int(res.real_tokens[k]),
                        int(res.padded_tokens[k]),
                    )
                )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _fail(item: _Item, exc: Exception) -> None:
    if item.future.done():
        return
    err = exc if isinstance(exc, InferenceError) else InferenceError(f"inference failed: {exc}")
    item.future.set_exception(err)


__all__ = ["CallResult", "ItemResult", "MicroBatcher", "Seq"]
