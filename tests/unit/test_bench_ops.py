"""profiles/ops_profile.py's aggregation of ONNX Runtime profiles: only the measured runs
count (warm-up runs share the profile), kernel time is summed per op type, and what the
model runs spent outside kernels shows as unattributed."""

from __future__ import annotations

from typing import Any

import pytest

from profiles.ops_profile import aggregate, per_call


def run(ts: int, dur: int) -> dict[str, Any]:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur, "args": {}}


def node(name: str, op: str, ts: int, dur: int) -> dict[str, Any]:
    return {"cat": "Node", "name": name, "ts": ts, "dur": dur, "args": {"op_name": op}}


# One warm-up run (0..1000) and two measured runs (2000..2100, 3000..3100), in ORT's shape.
EVENTS = [
    {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 5, "args": {}},
    run(0, 1000),
    node("mm_0_kernel_time", "DynamicQuantizeMatMul", 10, 900),  # warm-up: left out
    run(2000, 100),
    {"cat": "Session", "name": "SequentialExecutor::Execute", "ts": 2001, "dur": 98, "args": {}},
    node("mm_0_kernel_time", "DynamicQuantizeMatMul", 2005, 60),
    node("mm_0_fence_before", "DynamicQuantizeMatMul", 2065, 1),  # not a kernel
    node("ln_0_kernel_time", "LayerNormalization", 2070, 20),
    run(3000, 100),
    node("mm_0_kernel_time", "DynamicQuantizeMatMul", 3005, 40),
    node("att_0_kernel_time", "QAttention", 3050, 30),
]


def test_aggregate_keeps_only_kernels_of_the_last_runs() -> None:
    got = aggregate(EVENTS, last_runs=2)
    assert got["runs"] == 2
    assert got["model_run_us"] == 200
    assert got["ops"] == {
        "DynamicQuantizeMatMul": {"us": 100, "count": 2},
        "LayerNormalization": {"us": 20, "count": 1},
        "QAttention": {"us": 30, "count": 1},
    }
    last = aggregate(EVENTS, last_runs=1)
    assert last["model_run_us"] == 100
    assert set(last["ops"]) == {"DynamicQuantizeMatMul", "QAttention"}
    every = aggregate(EVENTS, last_runs=3)
    assert every["ops"]["DynamicQuantizeMatMul"] == {"us": 1000, "count": 3}


def test_aggregate_refuses_more_runs_than_the_profile_has() -> None:
    with pytest.raises(ValueError, match="last 4 runs"):
        aggregate(EVENTS, last_runs=4)
    with pytest.raises(ValueError):
        aggregate(EVENTS, last_runs=0)


def test_per_call_merges_sessions_and_divides_by_calls() -> None:
    pool = aggregate(EVENTS, last_runs=2)
    small = {"runs": 2, "model_run_us": 40, "ops": {"LayerNormalization": {"us": 20, "count": 2}}}
    got = per_call([pool, small], calls=2)
    assert got["runs_per_call"] == 2.0
    assert got["model_run_ms"] == pytest.approx(0.12)  # (200 + 40) us over 2 calls
    assert got["kernel_ms"] == pytest.approx(0.085)  # (100 + 40 + 30) us over 2 calls
    assert got["unattributed_ms"] == pytest.approx(0.035)
    rows = {r["op"]: r for r in got["ops"]}
    biggest_first = ["DynamicQuantizeMatMul", "LayerNormalization", "QAttention"]
    assert [r["op"] for r in got["ops"]] == biggest_first
    assert rows["DynamicQuantizeMatMul"]["ms_per_call"] == pytest.approx(0.05)
    assert rows["DynamicQuantizeMatMul"]["share"] == pytest.approx(0.05 / 0.12, abs=1e-4)
    assert rows["LayerNormalization"]["ms_per_call"] == pytest.approx(0.02)
    assert rows["LayerNormalization"]["count_per_call"] == 1.5
    assert sum(r["share"] for r in got["ops"]) == pytest.approx(0.085 / 0.12, abs=1e-3)
