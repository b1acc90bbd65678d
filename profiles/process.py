"""The service as a real process, for every profile run and the tests that reuse them: a free
loopback port, start, wait for ``/readyz``, stop gracefully. One copy, used by the benchmarks,
the profiles, the reliability runs and the test fixtures (``tests/noida.py`` takes the port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port free now (another process may take it before it is bound: callers
    that can lose that race retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Until ``base``/readyz answers 200; fails at once when the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(base + "/readyz", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout_s}s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGINT: the service's graceful stop without the load-balancer grace."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def running(
    cmd: Sequence[str],
    port: int,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180.0,
    root: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` (a server that listens on ``port``), wait until it is ready, yield it,
    stop it; its output goes to ``log_path``. ``proc.returncode`` is set afterwards.
    ``root``: the checkout whose code runs (another one for a before/after comparison)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root), **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(map(str, cmd)), cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            try:
                wait_ready(f"http://127.0.0.1:{port}", proc, timeout_s)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; see {log_path}") from None
            yield proc
        finally:
            stop(proc)


@contextlib.contextmanager
def serve(
    args: Sequence[str], port: int, log_dir: Path, timeout_s: float = 60.0, root: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m app serve --port PORT ARGS``, its log in ``log_dir``/server-PORT.log."""
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port), *args]
    log = log_dir / f"server-{port}.log"
    with running(cmd, port, log, timeout_s=timeout_s, root=root) as proc:
        yield proc
