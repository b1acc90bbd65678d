"""Per-thread-group CPU on ``/metrics``: grouping by thread name, and counters that only
grow though threads come and go (a fake ``/proc/self/task`` tree drives the ticks)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.thread_cpu import NATIVE, TASKS, ThreadCpuCollector, group_of


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("MainThread", "event_loop"),
        ("scoring_0", "scoring"),
        ("scoring_1", "scoring"),
        ("tantivy_0", "tantivy"),
        ("asyncio_3", "asyncio"),
        ("Thread-3 (worker)", "Thread"),
        ("plain", "plain"),
    ],
)
def test_a_thread_counts_under_its_name_without_the_worker_number(name: str, group: str) -> None:
    assert group_of(name) == group


def _task(root: Path, tid: int, run_ns: int, wait_ns: int) -> None:
    (root / str(tid)).mkdir(exist_ok=True)
    (root / str(tid) / "schedstat").write_text(f"{run_ns} {wait_ns} 7\n")


def _values(reg: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        s.labels["thread"]: s.value for fam in reg.collect() for s in fam.samples if s.name == name
    }


def test_groups_sum_their_threads_and_never_go_down_when_a_thread_exits(tmp_path: Path) -> None:
    me = threading.current_thread()
    me_id = threading.get_native_id()
    reg = CollectorRegistry()
    reg.register(ThreadCpuCollector(tmp_path))
    _task(tmp_path, me_id, 2_000_000_000, 100_000_000)
    _task(tmp_path, 999_001, 500_000_000, 0)  # not a Python thread: native
    _task(tmp_path, 999_002, 250_000_000, 50_000_000)
    cpu = _values(reg, "rerank_thread_cpu_seconds_total")
    assert cpu[group_of(me.name)] == pytest.approx(2.0)
    assert cpu[NATIVE] == pytest.approx(0.75)
    assert _values(reg, "rerank_thread_runqueue_wait_seconds_total")[NATIVE] == pytest.approx(0.05)

    # One native thread exits, the other runs on: what the gone one spent stays counted.
    (tmp_path / "999001" / "schedstat").unlink()
    (tmp_path / "999001").rmdir()
    _task(tmp_path, 999_002, 400_000_000, 50_000_000)
    assert _values(reg, "rerank_thread_cpu_seconds_total")[NATIVE] == pytest.approx(0.9)


def test_nothing_is_exported_where_there_is_no_task_tree(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    reg.register(ThreadCpuCollector(tmp_path / "absent"))
    assert _values(reg, "rerank_thread_cpu_seconds_total") == {}


@pytest.mark.skipif(not TASKS.is_dir(), reason="no /proc/self/task (not Linux)")
def test_a_named_worker_burning_cpu_is_counted_under_its_group() -> None:
    reg = CollectorRegistry()
    reg.register(ThreadCpuCollector())
    before = _values(reg, "rerank_thread_cpu_seconds_total").get("burner", 0.0)

    def burn() -> None:
        x = 0
        while x < 3_000_000:
            x += 1
        # Read while this thread still exists: its name maps its tid to the group.
        _values(reg, "rerank_thread_cpu_seconds_total")

    t = threading.Thread(target=burn, name="burner_0")
    t.start()
    t.join()
    after = _values(reg, "rerank_thread_cpu_seconds_total").get("burner", 0.0)
    assert after - before > 0.01  # 3 million iterations of Python: well over 10 ms


def test_a_new_thread_that_gets_an_old_thread_id_is_counted_from_zero(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    reg.register(ThreadCpuCollector(tmp_path))
    _task(tmp_path, 999_003, 800_000_000, 0)
    assert _values(reg, "rerank_thread_cpu_seconds_total")[NATIVE] == pytest.approx(0.8)
    (tmp_path / "999003" / "schedstat").unlink()
    (tmp_path / "999003").rmdir()
    _values(reg, "rerank_thread_cpu_seconds_total")  # a scrape while the id is free
    _task(tmp_path, 999_003, 100_000_000, 0)  # the id again, on a thread that just started
    assert _values(reg, "rerank_thread_cpu_seconds_total")[NATIVE] == pytest.approx(0.9)
