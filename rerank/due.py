"""When a request's model work is due.

A search's ranking budget starts when retrieval has answered, not when the request arrived:
a cluster that takes 30 ms must not leave ranking nothing. Until retrieval answers, that
instant is unknown, so work queued early (the query, the first chunks: the overlap) is due
``budget_s`` after *now*, the soonest retrieval could still answer; once it has, ``fix``
pins the instant. Either way never past ``end``, the caller's end-to-end deadline. The
batcher reads :meth:`Due.at` whenever it orders or cuts work, so a request still waiting on
its cluster neither jumps ahead of one whose budget is running, nor has its early chunks
cut for a deadline that has not started, nor gets a model call longer than its budget.
"""

from __future__ import annotations

import math


class Due:
    """A ``time.monotonic()`` instant, possibly floating until :meth:`fix` (see module)."""

    __slots__ = ("budget_s", "end", "fixed")

    def __init__(
        self, fixed: float | None = None, *, budget_s: float | None = None, end: float | None = None
    ) -> None:
        self.budget_s = budget_s
        self.end = math.inf if end is None else end
        self.fixed = None if fixed is None else min(fixed, self.end)

    @classmethod
    def at_instant(cls, deadline: float | None) -> Due:
        """Fixed from the start (``None``: never due): the rerank routes, tests."""
        return cls(math.inf if deadline is None else deadline)

    def at(self, now: float) -> float:
        """The instant the work is due, as known at ``now`` (``math.inf``: never)."""
        if self.fixed is not None:
            return self.fixed
        if self.budget_s is None:
            return self.end
        return min(now + self.budget_s, self.end)

    def fix(self, start: float) -> None:
        """The budget starts at ``start`` (retrieval answered); a second call changes
        nothing."""
        if self.fixed is None:
            self.fixed = self.at(start)

    @property
    def latest(self) -> float:
        """The latest it can be due: work that cannot finish by then is hopeless. While it
        floats, only ``end`` bounds it (retrieval may take long yet)."""
        return self.end if self.fixed is None else self.fixed

    @property
    def deadline(self) -> float | None:
        """The fixed instant, ``None`` when there is none (or it still floats)."""
        return None if self.fixed is None or math.isinf(self.fixed) else self.fixed


__all__ = ["Due"]
