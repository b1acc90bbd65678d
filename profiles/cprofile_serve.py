"""``python -m app`` under cProfile, every thread included, only inside a window.

    python -m profiles.cprofile_serve OUT.prof serve --port ...

cProfile (3.11) sees only the thread that enables it. Here the main thread (event loop,
HTTP, JSON, validation, ranking) is profiled between SIGUSR1 and SIGUSR2, and every thread
started inside that window (the scoring and retrieval executors start on the first request)
from its start to its end. Startup (imports, loading the model) stays out of the profile.
All of them are merged into one ``.prof`` when the service exits.
"""

from __future__ import annotations

import cProfile
import pstats
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

_main = cProfile.Profile()
_threads: list[cProfile.Profile] = []
_window = threading.Event()
_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    if not _window.is_set():
        _run(self)
        return
    prof = cProfile.Profile()
    _threads.append(prof)
    prof.enable()
    try:
        _run(self)
    finally:
        prof.disable()


def _start(signum: int, frame: FrameType | None) -> None:
    _window.set()
    _main.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    _main.disable()
    _window.clear()


def main() -> int:
    out = Path(sys.argv[1])
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    from app.cli import main as app_main

    try:
        rc = app_main(sys.argv[2:])
    finally:
        _main.disable()
    stats = pstats.Stats(_main)
    for prof in _threads:
        stats.add(prof)
    stats.dump_stats(out)
    print(f"cProfile: main thread + {len(_threads)} thread(s) -> {out}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
