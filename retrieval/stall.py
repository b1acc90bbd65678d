"""The crash-test hook both backends' builds call at their stages (``start``, ``load``,
``switch``): with ``RetrievalConfig.index_stall`` set (``RERANK_INDEX_STALL``, read by
``app/config.py`` like every setting) the build announces the stage on stderr and waits
there to be killed, so a test can ``kill -9`` it at a known point. Off by default."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Stall = Callable[[str], None]  # called with the stage's name as a build reaches it


def no_stall(name: str) -> None:
    """The hook when none is configured: every stage passes."""


def stall_at(at: str | None) -> Stall:
    """The hook for the configured stage (``None``: ``no_stall``)."""
    if not at:
        return no_stall

    def stage(name: str) -> None:
        if name == at:
            print(f"stalled at {name}", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)

    return stage


__all__ = ["Stall", "no_stall", "stall_at"]
