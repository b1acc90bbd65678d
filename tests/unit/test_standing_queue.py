"""The two parts of shedding on a standing queue (issue 27, row 3): the age of the oldest
job waiting for a thread (``WaitLine``) and CoDel's test that a wait has stood over its
target for a whole interval (``StandingQueue``)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from app.admission import StandingQueue
from retrieval.waiting import WaitLine


def test_a_burst_passes_a_queue_that_stays_is_standing() -> None:
    q = StandingQueue(target_s=0.010, interval_s=0.100)
    assert not q.standing(0.005, now=1.000)
    assert not q.standing(0.030, now=1.020)  # over the target since 1.000: a burst so far
    assert q.above_since == 1.000
    assert not q.standing(0.040, now=1.090)  # a newer head, over since 1.060: still 1.000
    assert q.standing(0.060, now=1.100)  # over it for the whole interval
    assert not q.standing(0.005, now=1.150)  # drained under the target: count reset
    assert q.above_since is None
    assert not q.standing(0.050, now=1.200)


def test_one_waiter_older_than_target_plus_interval_is_standing() -> None:
    """The age of the oldest waiter is its own history: no earlier sample is needed."""
    q = StandingQueue(target_s=0.010, interval_s=0.100)
    assert not q.standing(0.100, now=5.0)
    assert StandingQueue(target_s=0.010, interval_s=0.100).standing(0.120, now=5.0)


def test_samples_an_interval_apart_start_the_count_afresh() -> None:
    """Nothing is known of the time between two far-apart samples: the queue may have
    drained, so two high ones do not make it standing."""
    q = StandingQueue(target_s=0.010, interval_s=0.100)
    assert not q.standing(0.050, now=1.000)
    assert not q.standing(0.050, now=1.500)
    assert q.above_since == 1.460


def test_an_old_sample_over_the_target_says_nothing_now() -> None:
    """Whether a queue may be building (what holds the bound's growth) is read from the
    last sample only while it is recent: searches may stop coming, reranks must not be held
    by a search seen long ago."""
    q = StandingQueue(target_s=0.010, interval_s=0.100)
    assert not q.standing(0.015, now=1.000)
    assert q.building(1.050)
    assert not q.building(1.500)


async def test_the_age_is_the_oldest_job_not_yet_started() -> None:
    line = WaitLine()
    gate, running = threading.Event(), threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    try:

        def held() -> str:
            running.set()
            gate.wait(5)
            return "held"

        first = asyncio.ensure_future(line.run(pool, held))
        await asyncio.to_thread(running.wait, 5)
        assert line.age() == 0.0 and len(line) == 0  # running: not waiting
        second = asyncio.ensure_future(line.run(pool, lambda: "second"))
        third = asyncio.ensure_future(line.run(pool, lambda: "third"))
        await asyncio.sleep(0.05)
        assert len(line) == 2
        assert line.age() >= 0.05  # the second has waited since it was handed over
        third.cancel()  # a caller that gives up before its job started
        await asyncio.sleep(0)
        assert len(line) == 1
        gate.set()
        assert await first == "held" and await second == "second"
        assert line.age() == 0.0 and len(line) == 0
    finally:
        gate.set()
        pool.shutdown(wait=True)
