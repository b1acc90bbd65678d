"""How long work handed to a local thread has waited to start: the queue admission reads.

Under overload the embedded backend's one search thread is where requests queue (seen at
2x the sustainable rate: retrieval 3 ms idle, 90-400 ms queued), and an answer that waited
there still comes back complete, so nothing downstream calls it late. The age of the
oldest job not yet started is what a new search would wait: admission sheds on it
(``app/admission.py``) before the wait turns into latency.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


class WaitLine:
    """Jobs handed to an executor and not yet started, in the order they were handed."""

    def __init__(self) -> None:
        self._since: dict[int, float] = {}  # insertion-ordered: the first is the oldest
        self._keys = itertools.count()
        self._lock = threading.Lock()  # the worker removes, the loop adds and reads

    def age(self, now: float | None = None) -> float:
        """Seconds the oldest waiting job has waited (0 when none waits)."""
        with self._lock:
            oldest = next(iter(self._since.values()), None)
        if oldest is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - oldest)

    def __len__(self) -> int:
        return len(self._since)

    async def run(self, executor: Executor, fn: Callable[[], T]) -> T:
        """``fn`` on ``executor``, counted as waiting until a worker starts it (or until
        the caller gives up on it before it started)."""
        key = next(self._keys)
        with self._lock:
            self._since[key] = time.monotonic()

        def started() -> T:
            self._forget(key)
            return fn()

        try:
            return await asyncio.get_running_loop().run_in_executor(executor, started)
        finally:
            self._forget(key)

    def _forget(self, key: int) -> None:
        with self._lock:
            self._since.pop(key, None)
