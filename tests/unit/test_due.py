"""The ranking budget starts when retrieval has answered: ``Due`` floats until then (issue 22;
how the batcher orders and cuts work by it: tests/unit/test_batcher.py)."""

from __future__ import annotations

import math

import pytest

from app.meta import RequestMeta
from rerank.due import Due


def test_a_floating_due_is_the_budget_from_now_until_fixed() -> None:
    due = Due(budget_s=0.02, end=None)
    assert due.at(100.0) == pytest.approx(100.02)
    assert due.at(100.5) == pytest.approx(100.52)  # retrieval still running: it moves on
    assert due.deadline is None
    due.fix(100.03)  # retrieval answered at 100.03
    assert due.at(101.0) == pytest.approx(100.05) and due.deadline == pytest.approx(100.05)
    due.fix(200.0)  # a second fix changes nothing
    assert due.deadline == pytest.approx(100.05)


def test_the_callers_end_to_end_deadline_caps_the_budget() -> None:
    due = Due(budget_s=0.02, end=100.04)
    assert due.at(100.0) == pytest.approx(100.02)
    assert due.at(100.03) == pytest.approx(100.04)
    due.fix(100.035)
    assert due.deadline == pytest.approx(100.04)
    assert Due.at_instant(None).at(5.0) == math.inf and Due.at_instant(None).deadline is None


def test_request_meta_bounds_retrieval_and_ranking_apart() -> None:
    meta = RequestMeta.search(20.0, 1000.0, t0=100.0)
    assert meta.retrieval_deadline == pytest.approx(101.0)
    assert meta.deadline is None  # the budget has not started
    meta.due.fix(100.08)  # retrieval took 80 ms: ranking still gets its 20
    assert meta.deadline == pytest.approx(100.10)
    capped = RequestMeta.search(20.0, 1000.0, 90.0, t0=100.0)
    assert capped.retrieval_deadline == pytest.approx(100.09)
    capped.due.fix(100.08)
    assert capped.deadline == pytest.approx(100.09)  # the caller's deadline wins
    rerank = RequestMeta.start(20.0, t0=100.0)  # no retrieval: the budget runs from arrival
    assert rerank.retrieval_deadline is None and rerank.deadline == pytest.approx(100.02)


def test_ranking_time_is_the_answer_less_retrieval() -> None:
    meta = RequestMeta.search(20.0, 1000.0, t0=100.0)
    meta.stages = {"retrieve": 0.03}
    meta.retrieved_at, meta.total_s = 100.03, 0.042
    timings = meta.timings_ms()
    assert list(timings) == ["retrieve", "ranking", "total"]
    assert timings["ranking"] == pytest.approx(12.0) and timings["total"] == 42.0
