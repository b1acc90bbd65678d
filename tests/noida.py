"""A real Elasticsearch-API engine for tests: ``noida-db`` (PyPI; a single binary written by
others) started once per session on a free loopback port with a temporary data dir.

Tests that need it skip with the reason when the binary is missing or does not answer in
time; set ``NOIDA_REQUIRED=1`` (e.g. in CI) to make that a failure instead of a skip.

Why the binary is started directly, not through the ``noida-db`` console script: that script
is a Python wrapper that runs the binary with ``subprocess.call``, so a SIGTERM to the
wrapper leaves the binary running (checked with noida-db 0.2.3). The server runs in its own
session and its whole process group is signalled at the end, so nothing is left behind.

Usage: copy to ``tests/noida.py``; in conftest.py
``from tests.noida import noida_index, noida_url  # noqa: F401``; per test, take a fresh
index name from ``noida_index`` (the server is shared by the whole session).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiles.process import free_port

START_TIMEOUT_S = float(os.environ.get("NOIDA_START_TIMEOUT", "20"))
STOP_TIMEOUT_S = 10.0
_PORT_TRIES = 3


def noida_binary() -> str | None:
    """The real executable: ``$NOIDA_DB_BIN``, else the one inside the ``noida_db`` package,
    else whatever ``noida-db`` is on PATH (possibly the wrapper; the process group covers it)."""
    env = os.environ.get("NOIDA_DB_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    with contextlib.suppress(ImportError, FileNotFoundError, TypeError):
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
        if path.is_file():
            if not os.access(path, os.X_OK):  # the wrapper chmods it on first use; so do we
                path.chmod(0o755)
            return str(path)
    return shutil.which("noida-db")


def _answers(url: str) -> bool:
    """Ready: GET / answers 200 with Elasticsearch's info document."""
    try:
        with urllib.request.urlopen(url + "/", timeout=1.0) as resp:
            body = json.loads(resp.read())
            return resp.status == 200 and "number" in body.get("version", {})
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)


def _tail(log: Path, n: int = 800) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-n:].strip()
    return ""


def _unavailable(reason: str) -> None:
    if os.environ.get("NOIDA_REQUIRED") == "1":
        pytest.fail(f"noida-db required but unavailable: {reason}", pytrace=False)
    pytest.skip(f"noida-db unavailable: {reason}")


@pytest.fixture(scope="session")
def noida_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``) of a running noida-db speaking Elasticsearch."""
    binary = noida_binary()
    if binary is None:
        _unavailable("no noida-db binary (pip install noida-db, or set NOIDA_DB_BIN)")
        return
    root = tmp_path_factory.mktemp("noida")
    reason = "did not start"
    for attempt in range(_PORT_TRIES):
        port = free_port()  # tiny race with other processes: retried below
        data, log = root / f"data{attempt}", root / f"noida{attempt}.log"
        url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary, "start", "--only", "elasticsearch",
                 "--elasticsearch-port", str(port), "--data-dir", str(data)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not _answers(url):
            time.sleep(0.05)
        if proc.poll() is None and _answers(url):
            try:
                yield url
            finally:
                _stop(proc)
            return
        code = proc.poll()  # before _stop, which sets it
        _stop(proc)
        out_text = _tail(log)
        if code is None or "already in use" not in out_text:
            reason = (
                f"exited with {code}"
                if code is not None
                else f"no answer on {url} within {START_TIMEOUT_S:g} s"
            ) + (f"; output: {out_text}" if out_text else "")
            break
        reason = f"port {port} taken: {out_text}"
    _unavailable(reason)


@pytest.fixture
def noida_index(noida_url: str) -> Iterator[str]:
    """A fresh index name (nothing created) on the shared server; every index whose name
    starts with it (``NAME``, ``NAME-<timestamp>`` behind an alias ``NAME``) is deleted after."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    # noida, like Elasticsearch 8+, refuses wildcard deletes: resolve, then delete by name.
    with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
        listing = f"{noida_url}/_cat/indices/{name}*?format=json&h=index"
        with urllib.request.urlopen(listing, timeout=5) as resp:
            names = [row["index"] for row in json.loads(resp.read())]
        if names:
            req = urllib.request.Request(f"{noida_url}/{','.join(names)}", method="DELETE")
            urllib.request.urlopen(req, timeout=5).close()
