"""Cross-request micro-batching: every request's texts go into shared model calls.

One loop owns the model. Requests queue *items* (one text, or one query–document pair)
with when they are due (``rerank/due.py``). Whenever the model is free the loop takes what
is queued, earliest deadline first, up to a token budget, and runs it at once: an idle
engine serves a lone request with no added wait, a busy one folds everything that arrived
during the current call into the next. A call never grows past what the cost model says
will finish (with a margin) before the earliest deadline in it, nor past half the time left
to that deadline: a call that runs long (neighbours on the cores) then costs only its own
items, and the next, smaller call still lands in time. An item that can no longer make its
deadline is cut, and so is the rest of its request's queue: a partial answer is the top of
the retrieval order, not a scattering.

An item may carry a *sink* (document embeddings: the cache). When its request stops
waiting, or it is cut, its future is cancelled at once (the request answers without it)
but the item moves to a bounded backfill queue that runs, in short slices, only when no
live work waits, and at most a quarter of the time (the event loop and retrieval need the
cores too); the sink gets the result. The queue keeps at most ``backfill_limit`` items
(oldest dropped first), none older than ``backfill_max_age_s``; a hung-up request's go.
A failed model call retries its items one by one: one poisoned input fails only its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor

from rerank.batch_item import Item, Sink, consume, fail
from rerank.config import BatchingConfig
from rerank.cost import CostModel
from rerank.due import Due
from rerank.observe import CallTrace, EngineObserver
from rerank.types import CallResult, ItemResult, Seq

log = logging.getLogger(__name__)
PROBE_AFTER_S = 1.0  # longest the model stays unused while work waits (see _probe_due)


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[list[Seq]], CallResult],
        executor: Executor,
        cost: CostModel,
        estimate: Callable[[Seq], int],
        observer: EngineObserver,
        config: BatchingConfig,
    ) -> None:
        self._run, self._executor, self._cost, self._cfg = run, executor, cost, config
        self._estimate, self._observer = estimate, observer
        self.max_tokens = config.batch_tokens
        self._queue: list[Item] = []
        self._backfill: deque[Item] = deque()
        self._inflight: list[Item] = []
        self._backfill_at = 0.0  # monotonic time before which no backfill call starts
        self._last_call = 0.0  # monotonic time the last model call ended
        self.backfilling = False  # whether the batch just picked is backfill
        self._order = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.calls = 0

    def submit(
        self,
        seqs: Sequence[Seq],
        deadline: float | Due | None,
        group: Hashable = None,
        sinks: Sequence[Sink | None] | None = None,
        trace: CallTrace | None = None,
    ) -> list[asyncio.Future[ItemResult]]:
        """Queue items due at ``deadline``: a ``time.monotonic()`` instant, None, or a Due."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # First use, or a new event loop (tests run one per test): the old loop's
            # items cannot be answered any more.
            self._queue.clear()
            self._backfill.clear()
            self._inflight = []
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop(), name="micro-batcher")
        assert self._wake is not None
        due = deadline if isinstance(deadline, Due) else Due.at_instant(deadline)
        futures = []
        for i, seq in enumerate(seqs):
            fut: asyncio.Future[ItemResult] = loop.create_future()
            fut.add_done_callback(consume)
            self._order += 1
            sink = sinks[i] if sinks is not None else None
            item = Item(seq, self._estimate(seq), due, self._order, group, fut, sink, trace=trace)
            self._queue.append(item)
            futures.append(fut)
        self._wake.set()
        return futures

    def drop(self, group: Hashable) -> None:
        """Forget a request's queued items, cache fills included: its client hung up."""
        for item in (i for i in self._queue if i.group is group):
            item.future.cancel()
        self._queue = [i for i in self._queue if i.group is not group]
        self._backfill = deque(i for i in self._backfill if i.group is not group)

    def backlog_s(self, deadline: float | None) -> float:
        """Predicted model time of the live work run before an item due at ``deadline``
        (EDF): what is queued due no later, and half of the call in flight."""
        due, now = math.inf if deadline is None else deadline, time.monotonic()
        live = (i for i in self._queue if not i.future.done())
        queued = sum(i.tokens for i in live if i.due.at(now) <= due)
        running = sum(i.tokens for i in self._inflight)
        return (self._cost_of(queued) if queued else 0.0) + (
            0.5 * self._cost_of(running) if running else 0.0
        )

    def cost_s(self, seqs: Sequence[Seq]) -> float:
        return self._cost_of(sum(self._estimate(s) for s in seqs))  # ``seqs`` alone

    def _pick(self) -> list[Item]:
        now = time.monotonic()
        for i in self._queue:
            i.deadline = i.due.at(now)
        self._queue.sort(key=lambda i: (i.deadline, i.order))
        batch: list[Item] = []
        keep: list[Item] = []
        cut: set[Hashable] = set()
        tokens = 0
        full = False
        for item in self._queue:
            if item.future.done():  # the request stopped waiting
                self._to_backfill(item)
                continue
            # Hopeless: cannot make the latest it may be due (a floating one: its end).
            hopeless = now + self._cost.predict(item.tokens) + self._cfg.margin_s > item.due.latest
            if hopeless and not batch and self._probe_due(now, item):
                hopeless = False  # measured, not assumed: see _probe_due
            if (item.group is not None and item.group in cut) or hopeless:
                if item.group is not None:
                    cut.add(item.group)  # the rest of that request goes too
                item.future.cancel()
                self._to_backfill(item)
                continue
            fits = not full and (
                not batch
                or (
                    not item.solo
                    and not batch[0].solo
                    and tokens + item.tokens <= self.max_tokens
                    and self._cost_of(tokens + item.tokens) <= self._slice(batch[0], now)
                )
            )
            if fits:
                batch.append(item)
                tokens += item.tokens
            else:
                full = True
                keep.append(item)
        self._queue = keep
        self.backfilling = False
        if batch or now < self._backfill_at:
            return batch
        self.backfilling = True
        # Late work is worth doing only while fresh: a burst must not leave the cores busy
        # long after it (the oldest are first in the queue).
        stale = time.perf_counter() - self._cfg.backfill_max_age_s
        while self._backfill and self._backfill[0].queued_at < stale:
            self._backfill.popleft()
        # Nothing live: a short slice of backfill (it cannot be interrupted once running).
        while self._backfill:
            item = self._backfill[0]
            if batch and (
                item.solo
                or batch[0].solo
                or self._cost.predict(tokens + item.tokens) > self._cfg.backfill_slice_s
            ):
                break
            self._backfill.popleft()
            batch.append(item)
            tokens += item.tokens
        return batch

    def _probe_due(self, now: float, item: Item) -> bool:
        """Whether to run ``item`` though the cost model calls it hopeless: no call has run
        for ``PROBE_AFTER_S`` and it still has time. Only a call corrects the estimate, so
        an estimate inflated by a burst of contention would otherwise cut all work (a query
        has no backfill) and never come down again: the model would stay unused."""
        return now - self._last_call >= PROBE_AFTER_S and now + self._cfg.margin_s < item.deadline

    def _cost_of(self, tokens: int) -> float:
        return self._cost.predict(tokens) * (1.0 + self._cfg.safety)

    def _slice(self, first: Item, now: float) -> float:
        """How long a call led by ``first`` (earliest deadline) may take: half the time left
        (a call that runs long costs only its own items), or up to 1.5x ``first`` alone when
        that predicts more (a busy machine), so short items ride along instead of each
        paying a call's fixed cost (measured: the queue fell behind). Never past the deadline."""
        left = first.deadline - now - self._cfg.margin_s
        half = max(self._cfg.min_slice_s, left / 2)
        return min(left, max(half, 1.5 * self._cost_of(first.tokens)))

    def _to_backfill(self, item: Item) -> None:
        if item.sink is None:
            return
        self._backfill.append(item)
        while len(self._backfill) > self._cfg.backfill_limit:
            self._backfill.popleft()

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = self._pick()
                if not batch:
                    self._wake.clear()
                    pause = self._backfill_at - time.monotonic() if self._backfill else None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), pause)
                    continue
                self._inflight = batch
                started = time.monotonic()
                try:
                    await self._call(loop, batch)
                except Exception as exc:  # never let one call take the loop down
                    log.exception("micro-batcher call failed")
                    for item in batch:
                        fail(item, exc)
                self._inflight, self._last_call = [], time.monotonic()
                if self.backfilling:  # leave the cores to others for a while
                    spent = time.monotonic() - started
                    rest = 1 / self._cfg.backfill_duty - 1
                    self._backfill_at = time.monotonic() + spent * rest
        except asyncio.CancelledError:
            for item in [*self._queue, *self._inflight]:
                item.future.cancel()
            raise

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[Item]) -> None:
        started, started_ns = time.perf_counter(), time.time_ns()
        for item in batch:
            self._observer.queue_wait(started - item.queued_at)
        # Backfill runs after its requests answered: not theirs to trace.
        traces = [] if self.backfilling else [i.trace for i in batch if i.trace is not None]
        try:
            res = await loop.run_in_executor(self._executor, self._run, [i.seq for i in batch])
        except Exception as exc:
            if traces:
                traces[0].model_call(traces, started_ns, len(batch), None, exc)
            if len(batch) == 1:
                fail(batch[0], exc)
                return
            # Find the culprit: each item goes back to the queue alone, so the others
            # still get their answer and deadlines still decide what runs.
            for item in batch:
                item.solo = True
                if not item.future.done() or item.sink is not None:
                    self._queue.append(item)
            return
        self.calls += 1
        if traces:
            traces[0].model_call(traces, started_ns, len(batch), res)
        # The model's own time (tokenise + infer, in the worker): waiting for the thread
        # hand-off is covered by the margin, and would feed back load noise.
        self._cost.observe(sum(i.tokens for i in batch), res.tokenize_s + res.infer_s)
        padded = int(res.padded_tokens.sum())
        self._observer.batch(
            size=len(batch),
            real_tokens=int(res.real_tokens.sum()),
            padded_tokens=padded,
            seconds=res.infer_s,
        )
        share = res.padded_tokens / max(padded, 1)
        for k, item in enumerate(batch):
            out = res.outputs[k]
            if item.sink is not None:
                item.sink(out)
            if not item.future.done():
                item.future.set_result(
                    ItemResult(
                        out,
                        res.tokenize_s * float(share[k]),
                        res.infer_s * float(share[k]),
                        int(res.real_tokens[k]),
                        int(res.padded_tokens[k]),
                    )
                )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            return  # never started, or started on a loop that is gone
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["MicroBatcher", "Sink"]
