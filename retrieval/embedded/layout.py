"""Where the embedded index lives on disk, so that a rebuild never takes it away.

An index directory holds finished builds in ``builds/<epoch-ms>/`` and a pointer file
``current`` naming the live one. A build is written beside the live one and switched in by
renaming a new pointer over the old (``os.replace``: atomic), so a reader sees the old build
or the new one, never half of one. The old build is removed only after the switch; what a
crashed build leaves behind is removed by the next build. An index built before this
layout (tantivy's files directly in the directory, no ``current``) still opens, and the
first new build replaces it the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from retrieval.errors import RetrievalError
from retrieval.stall import Stall, no_stall

POINTER = "current"
BUILDS = "builds"
LOCK = "build.lock"
# tantivy's own files in the old flat layout (segments are <32 hex>.<component>).
_TANTIVY_FILE = re.compile(r"^(meta\.json|\.managed\.json|\.tantivy-.*\.lock|[0-9a-f]{32}\..+)$")


def read_pointer(root: Path) -> str | None:
    """The live build's name, None without a pointer (old layout or no index)."""
    try:
        name = (root / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def live_dir(root: Path) -> Path | None:
    """The directory tantivy should open: the pointed-to build, else the old flat layout,
    else None (no index)."""
    name = read_pointer(root)
    if name is None:
        return root if (root / "meta.json").is_file() else None
    build = root / BUILDS / name
    return build if (build / "meta.json").is_file() else None


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """One build at a time per directory; the kernel drops the lock if the builder dies."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RetrievalError(f"another build is running in {root}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_build(root: Path) -> Path:
    """A fresh build directory; leftovers of crashed builds are removed first (call with
    ``build_lock`` held)."""
    builds = root / BUILDS
    builds.mkdir(parents=True, exist_ok=True)
    live = read_pointer(root)
    for leftover in builds.iterdir():
        if leftover.name != live:
            shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (root / f"{POINTER}.tmp").unlink()
    if live is not None:
        _remove_flat(root)  # a crash between a first switch and its clean-up
    name = str(time.time_ns() // 1_000_000)
    while (builds / name).exists() or name == live:
        name = str(int(name) + 1)
    path = builds / name
    path.mkdir()
    return path


def switch(root: Path, build: Path, stage: Stall = no_stall) -> None:
    """Make ``build`` the live index in one rename, then remove the one it replaces
    (``stage``: the crash-test hook, retrieval/stall.py)."""
    old = read_pointer(root)
    _fsync_tree(build)
    tmp = root / f"{POINTER}.tmp"
    with tmp.open("w") as fh:
        fh.write(build.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    stage("switch")
    os.replace(tmp, root / POINTER)
    _fsync_dir(root)
    if old is not None and old != build.name:
        shutil.rmtree(root / BUILDS / old, ignore_errors=True)
    _remove_flat(root)


def _remove_flat(root: Path) -> None:
    for f in root.iterdir():
        if f.is_file() and _TANTIVY_FILE.match(f.name):
            f.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["build_lock", "live_dir", "new_build", "read_pointer", "switch"]
