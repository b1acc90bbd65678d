"""CPU time and run-queue wait per thread group, on ``/metrics``.

A request crosses several threads: the event loop (HTTP, orchestration, ranking), the
scoring executor (tokenizer, ONNX Runtime), the retrieval executor (tantivy) and native
pools no Python thread names (ONNX Runtime's intra-op threads). The process-wide CPU
figure cannot say which of them a rate runs out of; this one can, and the run-queue wait
(time a thread was ready but had no core) says when the cores themselves are short, by
the process's own threads or by neighbours.

Read from Linux's ``/proc/self/task/<tid>/schedstat`` (nanoseconds on a core, nanoseconds
waiting for one) at each scrape; nothing is exported where it is missing. Threads that
have exited keep what they were counted for, so both counters only grow.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

TASKS = Path("/proc/self/task")
NATIVE = "native"  # threads Python did not start: ONNX Runtime, tokenizers, tantivy pools
_SUFFIX = re.compile(r"(_\d+|-\d+.*)$")  # "scoring_0" -> "scoring", "Thread-3 (f)" -> "Thread"


def group_of(name: str) -> str:
    """The group a Python thread counts under: its name without the worker number."""
    return "event_loop" if name == "MainThread" else _SUFFIX.sub("", name) or name


class ThreadCpuCollector(Collector):
    def __init__(self, tasks: Path = TASKS) -> None:
        self._tasks = tasks
        self._lock = threading.Lock()
        self._last: dict[int, tuple[int, int]] = {}  # tid -> (run ns, wait ns) last read
        self._run: dict[str, int] = {}  # group -> ns, summed over every thread seen
        self._wait: dict[str, int] = {}

    def _read(self) -> None:
        names = {t.native_id: group_of(t.name) for t in threading.enumerate()}
        try:
            tids = [int(p.name) for p in self._tasks.iterdir()]
        except OSError:
            return
        # Only the threads read now are remembered: a new thread may get a gone one's id.
        last: dict[int, tuple[int, int]] = {}
        for tid in tids:
            try:
                run, wait = map(int, (self._tasks / str(tid) / "schedstat").read_text().split()[:2])
            except (OSError, ValueError):
                continue  # exited since the listing, or no schedstat in this kernel
            group = names.get(tid, NATIVE)
            last_run, last_wait = self._last.get(tid, (0, 0))
            self._run[group] = self._run.get(group, 0) + max(0, run - last_run)
            self._wait[group] = self._wait.get(group, 0) + max(0, wait - last_wait)
            last[tid] = (run, wait)
        self._last = last

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._read()
            run, wait = dict(self._run), dict(self._wait)
        if not run:
            return
        cpu = CounterMetricFamily(
            "rerank_thread_cpu_seconds",
            "CPU time by thread group: event_loop, scoring, tantivy, native (threads Python "
            "did not start, e.g. ONNX Runtime's pool)",
            labels=["thread"],
        )
        waited = CounterMetricFamily(
            "rerank_thread_runqueue_wait_seconds",
            "Time the group's threads were ready to run but waited for a core",
            labels=["thread"],
        )
        for group in sorted(run):
            cpu.add_metric([group], run[group] / 1e9)
            waited.add_metric([group], wait[group] / 1e9)
        yield cpu
        yield waited
