"""The micro-batcher, the embedding cache and partial answers (issue 3)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank.batcher import MicroBatcher
from rerank.cache import EmbeddingCache
from rerank.cold import score_cold
from rerank.config import BatchingConfig, EngineConfig
from rerank.cost import CostModel
from rerank.due import Due
from rerank.engine import ScoringEngine
from rerank.errors import InferenceError
from rerank.observe import NullObserver
from rerank.scorer import QueryScorer
from rerank.types import CallResult, Doc, Seq


class FakeModel:
    """Output row = (len(text), code of first char): any mix-up between items shows."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[Seq]] = []
        self.gate = gate

    def __call__(self, seqs: list[Seq]) -> CallResult:
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.calls.append(list(seqs))
        if any("poison" in t for t, _ in seqs):
            raise RuntimeError("ORT says no")
        out = np.array([[len(t), ord(t[0])] for t, _ in seqs], dtype=np.float32)
        ones = np.ones(len(seqs), dtype=np.int64)
        return CallResult(out, 0.0, 1e-4 * len(seqs), ones, ones)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(max_workers=1)
    yield ex
    ex.shutdown(wait=True)


def make_batcher(
    model: FakeModel,
    ex: ThreadPoolExecutor,
    cost: CostModel | None = None,
    estimate: Callable[[Seq], int] = lambda s: 1,
    observer: Any = None,
    max_tokens: int = BatchingConfig.batch_tokens,
) -> MicroBatcher:
    cost = cost or CostModel(per_call_s=1e-5, per_token_s=1e-7)
    return MicroBatcher(
        model, ex, cost, estimate, observer or NullObserver(), BatchingConfig(max_tokens)
    )


def want(text: str) -> list[float]:
    return [float(len(text)), float(ord(text[0]))]


async def test_concurrent_requests_share_calls_and_get_their_own_results(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, executor, max_tokens=64)
    rng = random.Random(7)
    texts = [
        ["".join(rng.choices("abcdefghij", k=rng.randint(1, 40))) for _ in range(rng.randint(1, 9))]
        for _ in range(40)
    ]

    async def one(ts: list[str]) -> list[list[float]]:
        futs = b.submit([(t, None) for t in ts], deadline=None)
        return [f.output.tolist() for f in await asyncio.gather(*futs)]

    tasks = [asyncio.ensure_future(one(ts)) for ts in texts]
    await asyncio.sleep(0)  # let every request queue before the first call runs
    gate.set()
    results = await asyncio.gather(*tasks)
    for ts, got in zip(texts, results, strict=True):
        assert got == [want(t) for t in ts]
    items = sum(len(ts) for ts in texts)
    assert len(model.calls) < items / 4  # really batched across requests
    assert max(len(c) for c in model.calls) <= 64  # token budget (1 token per item here)
    await b.close()


async def test_an_idle_batcher_runs_a_lone_request_at_once(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    b = make_batcher(model, executor)
    (fut,) = b.submit([("solo", None)], deadline=None)
    res = await asyncio.wait_for(fut, 5)
    assert res.output.tolist() == want("solo") and len(model.calls) == 1
    await b.close()


async def test_earliest_deadline_first_and_hopeless_items_dropped(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    # The cost model says every call costs 50 ms.
    b = make_batcher(model, executor, cost=CostModel(per_call_s=0.05, per_token_s=1e-9))
    (blocker,) = b.submit([("blocker", None)], deadline=None)
    await asyncio.sleep(0)  # the blocker is in the executor, waiting on the gate
    now = time.monotonic()
    late = b.submit([("late", None)], deadline=None)
    soon = b.submit([("soon", None)], deadline=now + 5.0)
    hopeless = b.submit([("hopeless", None)], deadline=now + 0.01)
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *late, *soon), 5)
    assert hopeless[0].cancelled()  # could not finish by its deadline: never run
    ran = [t for call in model.calls for t, _ in call]
    assert "hopeless" not in ran
    assert ran.index("soon") <= ran.index("late")  # earliest deadline first
    await b.close()


async def test_work_of_a_search_still_retrieving_is_neither_cut_nor_put_first(
    executor: ThreadPoolExecutor,
) -> None:
    """A floating item (its request still waits on the cluster) is due one budget from now:
    it is ordered by that, but not cut as hopeless (retrieval may take long yet), though a
    fixed deadline that near is; once its budget has passed, it is cut."""
    gate = threading.Event()
    model = FakeModel(gate)
    # Every call costs 50 ms: a 20 ms budget that started at submission would be hopeless.
    b = make_batcher(model, executor, cost=CostModel(per_call_s=0.05, per_token_s=1e-9))
    (blocker,) = b.submit([("blocker", None)], deadline=None)
    await asyncio.sleep(0)  # the blocker is in the executor, waiting on the gate
    now = time.monotonic()
    relaxed = b.submit([("relaxed", None)], Due(budget_s=5.0))
    running = b.submit([("running", None)], deadline=now + 1.0)
    tight = b.submit([("tight", None)], Due(budget_s=0.02))
    spent = Due(budget_s=0.02)
    spent.fix(now - 1.0)  # retrieval answered a second ago: its budget is gone
    late = b.submit([("late", None)], spent)
    fixed_soon = b.submit([("fixed soon", None)], deadline=now + 0.02)
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *relaxed, *running, *tight), 5)
    assert late[0].cancelled() and fixed_soon[0].cancelled()
    ran = [t for call in model.calls for t, _ in call]
    assert "late" not in ran and "fixed soon" not in ran
    assert ran.index("tight") <= ran.index("running") <= ran.index("relaxed")
    await b.close()


async def test_an_inflated_estimate_is_measured_again_instead_of_starving_the_model(
    executor: ThreadPoolExecutor,
) -> None:
    """A burst of contention can leave the cost model predicting more than any budget: then
    every item looks hopeless, nothing runs, and only a run could correct the estimate. An
    unused model probes: the first item with time left runs, at most once per
    PROBE_AFTER_S, and its call brings the estimate down."""
    model = FakeModel()
    cost = CostModel(per_call_s=10.0, per_token_s=1e-9)  # a call "takes" 10 s
    b = make_batcher(model, executor, cost=cost)
    (probe,) = b.submit([("probe", None)], deadline=time.monotonic() + 0.5)
    await asyncio.wait_for(probe, 5)  # ran, though predicted hopeless
    assert cost.per_call_s < 10.0  # the call was measured
    (cut,) = b.submit([("cut", None)], deadline=time.monotonic() + 0.5)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(cut, 5)  # still predicted hopeless, and a probe just ran
    assert [t for call in model.calls for t, _ in call] == ["probe"]
    await b.close()


async def test_a_failing_call_fails_only_the_poisoned_item(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, executor)
    (blocker,) = b.submit([("blocker", None)], deadline=None)
    await asyncio.sleep(0)
    a = b.submit([("alpha", None), ("poison pill", None)], deadline=None)
    c = b.submit([("gamma", None)], deadline=None)
    gate.set()
    await asyncio.wait([blocker, *a, *c], timeout=5)
    assert a[0].result().output.tolist() == want("alpha")
    assert isinstance(a[1].exception(), InferenceError)
    assert c[0].result().output.tolist() == want("gamma")
    (after,) = b.submit([("still serving", None)], deadline=None)
    assert (await asyncio.wait_for(after, 5)).output.tolist() == want("still serving")
    await b.close()


async def test_a_call_is_cut_to_what_the_cost_model_fits_before_the_deadline(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    # 100 ms per item predicted, 115 ms with the safety pad; a call may take half the time
    # left (~475 ms of a 950 ms deadline): 4 items, not 5.
    b = make_batcher(model, executor, cost=CostModel(per_call_s=0.0, per_token_s=0.1))
    futs = b.submit([(f"item {i}", None) for i in range(8)], deadline=time.monotonic() + 0.95)
    await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)
    assert len(model.calls[0]) == 4
    ran = [t for call in model.calls for t, _ in call]
    assert ran[:4] == [f"item {i}" for i in range(4)]  # in submission (retrieval) order
    await b.close()


async def test_a_hopeless_item_cuts_the_rest_of_its_request(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    # Tokens = characters; 100 ms a token: ten characters can never make a 0.5 s deadline.
    b = make_batcher(
        model,
        executor,
        cost=CostModel(per_call_s=0.0, per_token_s=0.1),
        estimate=lambda s: len(s[0]),
    )
    due = time.monotonic() + 0.5
    a = b.submit([("a", None), ("bbbbbbbbbb", None), ("c", None)], due, group="A")
    other = b.submit([("d", None)], due, group="B")
    await asyncio.wait_for(asyncio.gather(*a, *other, return_exceptions=True), 5)
    assert a[0].result().output.tolist() == want("a")
    assert a[1].cancelled() and a[2].cancelled()  # "c" would fit, but it ranks below a hole
    assert other[0].result().output.tolist() == want("d")
    await b.close()


async def test_cut_items_with_a_sink_run_later_in_short_slices(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    b = make_batcher(model, executor, cost=CostModel(per_call_s=0.0, per_token_s=0.004))
    got: dict[str, list[float]] = {}

    def sink_for(t: str) -> Callable[[np.ndarray], None]:
        return lambda v: got.__setitem__(t, v.tolist())

    texts = [f"doc {i}" for i in range(6)]
    futs = b.submit(
        [(t, None) for t in texts], time.monotonic() - 1, sinks=[sink_for(t) for t in texts]
    )
    await asyncio.wait(futs, timeout=5)
    assert all(f.cancelled() for f in futs)  # the request hears "cut" at once
    for _ in range(500):  # the backfill runs when nothing live waits
        if len(got) == len(texts):
            break
        await asyncio.sleep(0.01)
    assert got == {t: want(t) for t in texts}
    assert max(len(c) for c in model.calls) == 1  # 4 ms an item: one per 5 ms slice
    await b.close()


async def test_the_loop_survives_an_error_outside_the_model(
    executor: ThreadPoolExecutor,
) -> None:
    class Flaky(NullObserver):
        failed = False

        def batch(self, **kw: Any) -> None:
            if not self.failed:
                self.failed = True
                raise RuntimeError("observer bug")

    b = make_batcher(FakeModel(), executor, observer=Flaky())
    (first,) = b.submit([("one", None)], deadline=None)
    with pytest.raises(InferenceError):
        await asyncio.wait_for(first, 5)
    (second,) = b.submit([("two", None)], deadline=None)
    assert (await asyncio.wait_for(second, 5)).output.tolist() == want("two")
    await b.close()


def test_cache_is_bounded_by_bytes_and_evicts_least_recently_used() -> None:
    vec = np.ones((1, 256), np.float32)  # 1 KiB of data each
    cache = EmbeddingCache(max_bytes=5 * (vec.nbytes + 200))
    for i in range(5):
        cache.put(f"d{i}", f"text {i}", vec)
    assert cache.get("d0", "text 0") is not None  # d0 is now the most recent
    cache.put("d5", "text 5", vec)
    assert len(cache) == 5 and cache.bytes <= cache.max_bytes
    assert cache.get("d1", "text 1") is None  # the least recently used went
    assert cache.get("d0", "text 0") is not None
    cache.put("big", "huge", np.ones((100, 256), np.float32))  # larger than the cache
    assert cache.get("big", "huge") is None and cache.bytes <= cache.max_bytes


def test_cache_invalidates_a_document_whose_text_changed() -> None:
    cache = EmbeddingCache(max_bytes=1 << 20)
    cache.put("d1", "old text", np.full((1, 4), 1.0, np.float32))
    assert cache.get("d1", "new text") is None  # edited: miss
    assert cache.get("d1", "old text") is None  # and the stale vector is gone
    cache.put("d1", "new text", np.full((1, 4), 2.0, np.float32))
    cache.put("d1", "newer text", np.full((1, 4), 3.0, np.float32))
    assert len(cache) == 1
    got = cache.get("d1", "newer text")
    assert got is not None and float(got[0, 0]) == 3.0


DOCS = [
    "Pasta with tomato sauce is a simple Italian dinner.",
    "The lift of a wing increases when it is immersed in a propeller slipstream.",
    "The football club signed a new striker this summer.",
    "Stock markets fell sharply on Tuesday.",
    "Boundary layer transition on a flat plate at supersonic speed.",
    "Heat transfer to a blunt body in hypersonic flow.",
]


async def test_engine_results_match_one_by_one_under_concurrency(engine: ScoringEngine) -> None:
    queries = ["wing lift", "pasta dinner", "stock market", "hypersonic heat", "football"]
    alone = [(await score_cold(engine, q, DOCS)).scores for q in queries]
    together = await asyncio.gather(*(score_cold(engine, q, DOCS) for q in queries))
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, t.scores, atol=1e-4)


async def test_cache_serves_the_second_request_and_late_work_fills_it(
    default_model_dir: Path,
) -> None:
    eng = ScoringEngine(
        EngineConfig(model_dir=default_model_dir, precision="fp32", max_length=64, threads=1)
    )
    try:
        assert eng.cache is not None
        docs = [Doc(f"d{i}", t, cache_id=f"d{i}") for i, t in enumerate(DOCS)]
        # A deadline that has all but passed: the answer is partial...
        s = QueryScorer(eng, "wing lift", time.monotonic() + 0.001)
        await s.submit(docs)
        await s.wait()
        first = s.collect()
        s.release()
        assert len(first.scores) < len(docs)
        # ...but the documents are still embedded in the background and fill the cache.
        for _ in range(500):
            if len(eng.cache) == len(docs):
                break
            await asyncio.sleep(0.01)
        assert len(eng.cache) == len(docs)
        s2 = QueryScorer(eng, "wing lift", time.monotonic() + 30)
        await s2.submit(docs)
        await s2.wait()
        second = s2.collect()
        assert second.cache_hits == len(docs) and len(second.scores) == len(docs)
        cold = await score_cold(eng, "wing lift", DOCS)
        np.testing.assert_allclose([second.scores[d.id] for d in docs], cold.scores, atol=1e-4)
    finally:
        await eng.aclose()


async def test_index_time_vectors_are_used_as_given(engine: ScoringEngine) -> None:
    vecs = engine.embed_documents(DOCS)
    s = QueryScorer(engine, "wing lift", None)
    await s.submit([Doc(str(i), "ignored", vecs[i]) for i in range(len(DOCS))])
    await s.wait()
    got = s.collect()
    assert got.index_vectors == len(DOCS) and got.cache_hits == 0
    cold = await score_cold(engine, "wing lift", DOCS)
    np.testing.assert_allclose(
        [got.scores[str(i)] for i in range(len(DOCS))], cold.scores, atol=1e-4
    )


def test_cost_model_learns_fixed_and_per_token_cost_apart() -> None:
    cost = CostModel(per_call_s=0.010, per_token_s=1e-3, alpha=0.5)
    for _ in range(40):  # the machine: 2 ms a call, 50 us a token
        cost.observe(10, 0.002 + 10 * 5e-5)  # a query alone: mostly fixed cost
        cost.observe(2000, 0.002 + 2000 * 5e-5)  # a full call
    assert cost.per_call_s == pytest.approx(0.002, rel=0.05)
    assert cost.per_token_s == pytest.approx(5e-5, rel=0.05)
    # One call 100x slower (a neighbour had the cores) moves the estimate at most 2x.
    before = cost.predict(2000)
    cost.observe(2000, 100 * before)
    assert cost.predict(2000) <= before * 1.5 * (1 + 1e-6)


async def test_short_items_share_a_call_whose_fixed_cost_exceeds_the_slice(
    executor: ThreadPoolExecutor,
) -> None:
    """A busy machine: a call's fixed cost (120 ms) is more than half the time left (250 ms).
    Eight requests' short items still go in one call (each adds 0.1 ms), not one call each:
    that call's cost is paid by the first item anyway."""
    model = FakeModel()
    b = make_batcher(model, executor, cost=CostModel(per_call_s=0.12, per_token_s=1e-4))
    deadline = time.monotonic() + 0.25
    futs = [f for g in range(8) for f in b.submit([(f"query {g}", None)], deadline, group=g)]
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert [len(c) for c in model.calls] == [8]


async def test_backfill_is_bounded_and_drops_the_oldest(executor: ThreadPoolExecutor) -> None:
    """Late work (cache fills of cut items) cannot pile up: past ``backfill_limit`` the
    oldest items are dropped, so memory and the work left after a burst stay bounded."""
    model = FakeModel()
    cfg = BatchingConfig(backfill_limit=3)
    b = MicroBatcher(model, executor, CostModel(1e-5, 1e-7), lambda s: 1, NullObserver(), cfg)
    got: list[str] = []
    texts = [f"doc {i}" for i in range(10)]
    futs = b.submit(
        [(t, None) for t in texts],
        time.monotonic() - 1,  # hopeless: every item is cut and goes to the backfill
        sinks=[(lambda v, t=t: got.append(t)) for t in texts],
    )
    await asyncio.wait(futs, timeout=5)
    for _ in range(500):
        if len(got) == 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # nothing more may arrive
    assert got == texts[-3:]
    assert sum(len(c) for c in model.calls) == 3
    await b.close()


async def test_stale_backfill_is_dropped_not_run(executor: ThreadPoolExecutor) -> None:
    """Late work older than ``backfill_max_age_s`` is dropped: after a burst the model
    goes idle instead of catching up for seconds."""
    gate = threading.Event()
    model = FakeModel(gate)
    cfg = BatchingConfig(backfill_max_age_s=0.2)
    b = MicroBatcher(model, executor, CostModel(1e-5, 1e-7), lambda s: 1, NullObserver(), cfg)
    live = b.submit([("live", None)], time.monotonic() + 5)  # holds the model
    await asyncio.sleep(0.05)
    got: list[str] = []
    late = b.submit([("late", None)], time.monotonic() - 1, sinks=[lambda v: got.append("late")])
    await asyncio.sleep(0.3)  # older than the limit before the model is free
    gate.set()
    await asyncio.wait_for(live[0], 5)
    await asyncio.sleep(0.1)
    assert late[0].cancelled() and got == []
    assert [t for c in model.calls for t, _ in c] == ["live"]
    await b.close()


async def test_backlog_counts_the_live_work_due_first(executor: ThreadPoolExecutor) -> None:
    """What an all-or-nothing request would wait behind: queued items due no later than
    it (earliest deadline first), half the call in flight, nothing cancelled."""
    gate = threading.Event()
    model = FakeModel(gate)
    cost = CostModel(per_call_s=0.0, per_token_s=0.01)  # 10 ms a token, no fixed cost
    b = make_batcher(model, executor, cost=cost, estimate=lambda s: len(s[0]))
    b.submit([("x" * 10, None)], deadline=None)  # runs first: 100 ms in flight
    await asyncio.sleep(0.05)  # the loop has handed it to the executor, held at the gate
    now = time.monotonic()
    b.submit([("y" * 4, None)], deadline=now + 1.0)
    later = b.submit([("z" * 6, None)], deadline=now + 3.0)
    safety = 1.0 + b._cfg.safety
    assert b.backlog_s(now + 2.0) == pytest.approx(safety * (0.04 + 0.5 * 0.10))
    assert b.backlog_s(None) == pytest.approx(safety * (0.10 + 0.5 * 0.10))
    later[0].cancel()  # its request stopped waiting: not ahead of anyone any more
    assert b.backlog_s(None) == pytest.approx(safety * (0.04 + 0.5 * 0.10))
    assert b.cost_s([("abc", None), ("de", None)]) == pytest.approx(safety * 0.05)
    gate.set()
    await b.close()


class Traced:
    """A request's tracing handle (rerank.observe.CallTrace) that records what it led."""

    def __init__(self) -> None:
        self.led: list[tuple[list[Any], int, bool, str]] = []

    def model_call(
        self,
        traces: Any,
        started_ns: int,
        size: int,
        result: CallResult | None,
        error: BaseException | None = None,
    ) -> None:
        self.led.append((list(traces), size, result is not None, str(error or "")))


async def test_a_shared_call_is_reported_once_by_its_leader_with_every_item_s_handle(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    b = make_batcher(model, executor)
    first, second = Traced(), Traced()
    futs = b.submit([("a", None), ("bb", None)], None, group="r1", trace=first)
    futs += b.submit([("ccc", None)], None, group="r2", trace=second)
    futs += b.submit([("untraced", None)], None, group="r3")
    await asyncio.gather(*futs)
    assert len(model.calls) == 1 and second.led == []
    ((traces, size, ok, error),) = first.led
    assert traces == [first, first, second] and size == 4 and ok and error == ""
    # A failed call is reported too, with its error, before its items retry alone.
    (poisoned,) = b.submit([("poison", None)], None, trace=second)
    with pytest.raises(InferenceError):
        await poisoned
    assert second.led[-1][2:] == (False, "ORT says no")
    await b.close()
