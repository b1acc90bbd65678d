"""Graceful shutdown of the service as a process (``python -m app serve``, configured by
RERANK_* variables as a container is), the timings in detail: the grace, the drain, the drain
timeout, an Elasticsearch-backed search. The real image's own SIGTERM run (20 requests in
flight) is tests/deploy/test_image.py. Requests go over raw loopback sockets with
``Expect: 100-continue``: the server sends ``100 Continue`` only once it has dispatched the
request to its handler, so "in flight" is a fact, not a guess about timing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from retrieval.elastic.index import index_documents
from retrieval.elastic.search import make_client
from tests.es_standin import StandIn
from tests.support import ROOT, SMALL_CORPUS

pytestmark = pytest.mark.slow  # the default model, converted once per session

STARTUP_TIMEOUT_S = 120.0
# Long documents (~250 tokens each once tokenised), so a request takes a while to score.
SENTENCE = "The committee reviewed the wing flutter measurements and the boundary layer data. "
DOCUMENT = SENTENCE * 16


def service_command(overrides: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """``python -m app serve`` from the checkout, with this process's environment less any
    RERANK_* of the caller's, then ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return [sys.executable, "-m", "app", "serve"], {**env, **overrides}


@dataclass
class Service:
    proc: asyncio.subprocess.Process
    port: int
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    admin_port: int | None = None
    _reader: asyncio.Task[None] | None = None

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


async def _start(argv: list[str], env: dict[str, str], cwd: Path) -> Service:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    port = admin_port = None
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while port is None:
            raw = await proc.stdout.readline()
            if not raw:
                await proc.wait()
                raise AssertionError("service exited at startup:\n" + "\n".join(lines))
            lines.append(raw.decode().rstrip())
            if m := re.search(r"Admin on http://127\.0\.0\.1:(\d+)", lines[-1]):
                admin_port = int(m.group(1))
            if m := re.search(r"Running on http://127\.0\.0\.1:(\d+)", lines[-1]):
                port = int(m.group(1))
    svc = Service(proc, port, env, lines, admin_port)

    async def keep_reading() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode().rstrip())

    svc._reader = asyncio.create_task(keep_reading())
    return svc


@contextlib.asynccontextmanager
async def service(overrides: Mapping[str, str], cwd: Path) -> AsyncIterator[Service]:
    argv, env = service_command(overrides)
    svc = await _start(argv, env, cwd)
    try:
        yield svc
    finally:
        if svc.proc.returncode is None:
            svc.proc.kill()
            await svc.proc.wait()
        if svc._reader is not None:
            await svc._reader


async def _read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    status = int(status_line.split()[1])
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def get(port: int, path: str) -> int:
    """A GET on a new connection; raises ConnectionRefusedError once the listener is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status, _, _ = await _read_response(reader)
        return status
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class InFlight:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    done_at: float = 0.0

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        try:
            result = await _read_response(self.reader)
            self.done_at = time.monotonic()
            return result
        finally:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def post_in_flight(port: int, path: str, payload: object) -> InFlight:
    """Returns once the server has dispatched the request to its handler (100 Continue) and
    has the whole body."""
    body = orjson.dumps(payload)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    interim = await reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100"), interim
    writer.write(body)
    await writer.drain()
    return InFlight(reader, writer)


def rerank_payload(n_docs: int, salt: int) -> dict[str, object]:
    # No budget: every document is scored (base_overrides lifts --rerank-max-ms far beyond
    # what scoring takes, however loaded the machine).
    return {
        "query": "wing flutter measurements",
        "documents": [f"{DOCUMENT} (report {salt}-{i})" for i in range(n_docs)],
    }


def base_overrides(
    tmp_path: Path, model_dir: Path, index_dir: Path, grace: float, drain: float
) -> dict[str, str]:
    return {
        "RERANK_HOST": "127.0.0.1",
        "RERANK_PORT": "0",
        "RERANK_ADMIN_PORT": "0",
        "RERANK_DATA_DIR": str(tmp_path),
        "RERANK_MODEL_DIR": str(model_dir),
        "RERANK_INDEX_DIR": str(index_dir),
        "RERANK_SHUTDOWN_GRACE_S": str(grace),
        "RERANK_DRAIN_TIMEOUT_S": str(drain),
        "RERANK_RERANK_MAX_MS": "600000",
    }


async def healthcheck(svc: Service, path: str = "/healthz") -> int:
    """deploy/healthcheck.py, the image's HEALTHCHECK and compose's check (``/readyz``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "deploy" / "healthcheck.py"),
        path,
        env={
            **svc.env,
            "RERANK_PORT": str(svc.port),
            "RERANK_ADMIN_PORT": str(svc.admin_port or ""),
        },
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def watch_drain(svc: Service, limit_s: float) -> tuple[bool, float]:
    """Poll /readyz on new connections until they are refused: (saw 503, refused at)."""
    saw_503 = False
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            status = await get(svc.port, "/readyz")
        except ConnectionRefusedError:
            return saw_503, time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            # Accepted just as the listener closed, then closed unanswered with the other
            # idle connections: the boundary itself. The next attempt is refused.
            continue
        assert status in (200, 503), status
        saw_503 = saw_503 or status == 503
        await asyncio.sleep(0.02)
    raise AssertionError(f"connections still accepted {limit_s}s after SIGTERM:\n{svc.log}")


async def test_sigterm_drains_requests_in_flight_then_exits_0(
    tmp_path: Path, default_model_dir: Path, small_index: Path
) -> None:
    grace, drain = 1.0, 60.0
    overrides = base_overrides(tmp_path, default_model_dir, small_index, grace, drain)
    async with service(overrides, tmp_path) as svc:
        assert await healthcheck(svc) == 0
        assert await get(svc.port, "/readyz") == 200
        n_docs = 32
        in_flight = [
            await post_in_flight(svc.port, "/v1/rerank", rerank_payload(n_docs, salt=i))
            for i in range(4)
        ]
        t_signal = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        saw_503, refused_at = await watch_drain(svc, grace + 10.0)
        results = await asyncio.gather(*(r.response() for r in in_flight))
        rc = await asyncio.wait_for(svc.proc.wait(), grace + drain + 10.0)
        stopped = time.monotonic() - t_signal

    assert saw_503, "/readyz stayed 200 during the grace"
    assert refused_at - t_signal >= grace * 0.9, "new connections refused before the grace"
    for status, headers, body in results:
        assert status == 200, body
        meta = orjson.loads(body)["meta"]
        assert meta["scored"] == n_docs and meta["partial"] is False
        assert headers.get("connection") == "close"  # clients reconnect elsewhere
    # The listener closed while requests were still being scored, and they still finished.
    assert max(r.done_at for r in in_flight) > refused_at
    assert rc == 0, svc.log
    assert stopped < grace + drain
    assert "every request in flight finished" in svc.log, svc.log
    assert "Traceback" not in svc.log and "Unclosed" not in svc.log, svc.log


async def test_drain_timeout_bounds_the_stop(
    tmp_path: Path, default_model_dir: Path, small_index: Path
) -> None:
    grace, drain = 0.5, 1.0
    overrides = base_overrides(tmp_path, default_model_dir, small_index, grace, drain)
    async with service(overrides, tmp_path) as svc:
        # Far more work than grace + drain allow for.
        in_flight = [
            await post_in_flight(svc.port, "/v1/rerank", rerank_payload(48, salt=i))
            for i in range(4)
        ]
        t_signal = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(svc.proc.wait(), grace + drain + 30.0)
        stopped = time.monotonic() - t_signal
        outcomes = await asyncio.gather(*(r.response() for r in in_flight), return_exceptions=True)

    assert rc == 0, svc.log
    # grace + drain, then the model batch already running finishes before the executor closes.
    assert stopped < grace + drain + 8.0, svc.log
    cut = [o for o in outcomes if isinstance(o, BaseException)]
    assert cut, "every request finished: the work was too small for this test"
    assert all(isinstance(o, (asyncio.IncompleteReadError, ConnectionError)) for o in cut), cut
    assert re.search(r"\d+ request\(s\) cancelled at the drain timeout", svc.log), svc.log


async def test_elasticsearch_backed_search_drains_and_the_client_closes(
    tmp_path: Path,
    cross_model_dir: Path,
    small_index: Path,
    es_standin: tuple[StandIn, str],
) -> None:
    standin, url = es_standin
    client = make_client(url, timeout_s=10)
    async for _ in index_documents(client, "documents", SMALL_CORPUS):
        pass
    await client.close()
    grace, drain = 0.5, 30.0
    overrides = {
        **base_overrides(tmp_path, cross_model_dir, small_index, grace, drain),
        "RERANK_ES_URL": url,
        "RERANK_RETRIEVAL_TIMEOUT_MS": "30000",  # a cluster taking 2 s is waited for
    }
    async with service(overrides, tmp_path) as svc:
        assert await healthcheck(svc, "/readyz") == 0  # compose's check: ES reachable
        standin.delay = lambda bodies: 2.0  # every _msearch now waits on "Elasticsearch"
        search = await post_in_flight(
            svc.port, "/v1/search", {"query": "wing flutter", "budget_ms": 30_000}
        )
        t_signal = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        _, refused_at = await watch_drain(svc, grace + 10.0)
        status, _, body = await search.response()
        rc = await asyncio.wait_for(svc.proc.wait(), grace + drain + 10.0)

    assert status == 200, body
    hits = orjson.loads(body)
    assert hits["backend"] == "elasticsearch" and hits["partial"] is False
    assert search.done_at > refused_at and search.done_at - t_signal >= 2.0
    assert rc == 0, svc.log
    assert "Traceback" not in svc.log and "Unclosed" not in svc.log, svc.log
