"""Fair connection slots (issue 27, rows 1 and 5), over real loopback sockets against the
runner ``serve`` uses: idle keep-alive connections give their slot to a new client, one
address cannot take every slot, the admin port answers probes while the data port is full,
and a client that stops reading is dropped with its buffered answer."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

from app.config import Config
from app.metrics import Metrics
from app.protocol import GuardedRunner
from app.server import create_app, make_runner
from app.services import Services
from app.shutdown import DRAINING
from rerank.engine import ScoringEngine
from retrieval.embedded.search import EmbeddedBackend

CAP = 8
BASE = {
    "max_connections": CAP,
    "max_connections_per_client": 0,
    "header_timeout_s": 30.0,  # longer than any test: only the guards under test act
    "keepalive_timeout_s": 30.0,
    "budget_ms": 5000,
}
GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Served:
    runner: GuardedRunner
    port: int
    admin_port: int | None
    metrics: Metrics

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for metric in self.metrics.requests.collect():
            for x in metric.samples:
                if x.name.endswith("_total") and x.value:
                    out[x.labels["status"]] = out.get(x.labels["status"], 0) + int(x.value)
        return out


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tiny_engine: ScoringEngine, small_backend: EmbeddedBackend) -> AsyncIterator[Serve]:
    runners: list[GuardedRunner] = []

    async def start(admin: bool = False, **overrides: object) -> Served:
        cfg = Config().override(**{**BASE, **overrides})
        metrics = Metrics()
        app = create_app(cfg, Services(cfg, tiny_engine, small_backend), metrics)  # type: ignore[arg-type]
        runner = make_runner(app, cfg)
        runners.append(runner)
        await runner.setup()
        admin_port = None
        if admin:  # as serve() does: the admin site first, its port marked
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            admin_port = runner.addresses[-1][1]
            runner.admin_ports.add(admin_port)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return Served(runner, runner.addresses[-1][1], admin_port, metrics)

    yield start
    for r in runners:
        await r.cleanup()


async def connect(port: int, host: str = "127.0.0.1", rcvbuf: int | None = None) -> Conn:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((host, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def request(c: Conn, raw: bytes = GET) -> tuple[int, bytes]:
    r, w = c
    w.write(raw)
    async with asyncio.timeout(3):
        head = (await r.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = next(
            int(ln.split(":", 1)[1])
            for ln in head.split("\r\n")
            if ln.lower().startswith("content-length")
        )
        return int(head.split()[1]), await r.readexactly(length)


async def until(cond: Callable[[], bool], timeout_s: float = 2.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def closed(c: Conn) -> bool:
    try:
        async with asyncio.timeout(2):
            return await c[0].read(1) == b""
    except ConnectionResetError:
        return True


async def test_idle_keepalive_connections_make_room(serve: Serve) -> None:
    """One client fills every slot with idle keep-alive connections (one request each):
    others are still served, the longest-idle connections closed first."""
    s = await serve()
    idle = []
    for _ in range(CAP * 2):  # twice the cap, like the 2,000 sockets of the issue
        c = await connect(s.port)
        assert (await request(c))[0] == 200
        idle.append(c)
    for _ in range(5):  # normal traffic, new connections, while the idle ones are held
        c = await connect(s.port)
        assert (await request(c))[0] == 200
        c[1].close()
    assert s.runner.stats.refused == 0 and s.runner.stats.reclaimed >= CAP
    assert s.runner.stats.open <= CAP
    assert await closed(idle[0])  # the oldest went first


async def test_busy_connections_are_not_reclaimed(serve: Serve) -> None:
    """A connection mid-request (headers not complete) keeps its slot: at the cap with no
    idle connection, the next is refused with 503 + Retry-After."""
    s = await serve()
    held = []
    for _ in range(CAP):
        c = await connect(s.port)
        c[1].write(b"GET /healthz HTTP/1.1\r\n")  # half a request
        held.append(c)
    await until(lambda: s.runner.stats.open == CAP)
    status, body = await request(await connect(s.port))
    assert status == 503 and orjson.loads(body)["error"]["code"] == "too_many_connections"
    assert s.runner.stats.reclaimed == 0


async def test_one_address_cannot_take_every_slot(serve: Serve) -> None:
    s = await serve(max_connections_per_client=3)
    held = [await connect(s.port) for _ in range(3)]  # silent: not reclaimable
    await until(lambda: s.runner.stats.open == 3)
    status, body = await request(await connect(s.port))
    assert status == 503
    assert "max_connections_per_client" in orjson.loads(body)["error"]["message"]
    other = await connect(s.port, host="127.0.0.2")  # another client still gets in
    assert (await request(other))[0] == 200
    assert len(held) == 3


async def test_probes_answer_on_the_admin_port_while_the_data_port_is_full(
    serve: Serve,
) -> None:
    s = await serve(admin=True)
    assert s.admin_port is not None
    held = []
    for _ in range(CAP):
        c = await connect(s.port)
        c[1].write(b"GET /healthz HTTP/1.1\r\n")
        held.append(c)
    await until(lambda: s.runner.stats.open == CAP)
    assert (await request(await connect(s.port)))[0] == 503  # the data port is full
    for path in ("/healthz", "/readyz", "/metrics"):
        raw = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        status, body = await request(await connect(s.admin_port), raw)
        assert status == 200, (path, body)
    search = b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    assert (await request(await connect(s.admin_port), search))[0] == 404


@pytest.mark.parametrize("metrics_auth", [True, False])
async def test_metrics_auth_holds_on_the_admin_port_too(serve: Serve, metrics_auth: bool) -> None:
    """Issue 27: /metrics has one rule wherever it is served. With keys and --metrics-auth
    (the default) a scrape needs a key on the admin port as on the data port: a second
    listener is no way around auth. The probes stay open on both."""
    s = await serve(admin=True, api_keys="k1", metrics_auth=metrics_auth)
    assert s.admin_port is not None

    def get(path: str, key: str | None = None) -> bytes:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        return f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()

    for port in (s.port, s.admin_port):
        for probe in ("/healthz", "/readyz"):
            assert (await request(await connect(port), get(probe)))[0] == 200
        status, body = await request(await connect(port), get("/metrics"))
        if metrics_auth:
            assert status == 401 and orjson.loads(body)["error"]["code"] == "unauthorized"
        else:
            assert status == 200
        assert (await request(await connect(port), get("/metrics", "wrong")))[0] == (
            401 if metrics_auth else 200
        )
        status, body = await request(await connect(port), get("/metrics", "k1"))
        assert status == 200 and b"rerank_admission_limit" in body


async def test_a_client_that_stops_reading_is_dropped(serve: Serve) -> None:
    """~4 MB answer, never read: past the write timeout the connection is aborted."""
    s = await serve(write_timeout_s=0.3, max_body_bytes=8_000_000, max_doc_chars=100)
    docs = [{"text": "a", "blob": "x" * 50_000} for _ in range(80)]
    body = orjson.dumps({"query": "q", "documents": docs, "return_documents": True})
    c = await connect(s.port, rcvbuf=4096)
    c[1].write(
        b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    await until(lambda: s.runner.stats.write_timeouts == 1, timeout_s=10)
    await until(lambda: s.runner.stats.open == 0)


def queued(engine: ScoringEngine) -> int:
    """Items queued or in the model call, on this test's loop (a session engine's batcher
    may still hold a previous test's call)."""
    b = engine.batcher
    task = b._task
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        return 0
    return len(b._queue) + len(b._inflight)


async def test_a_hang_up_drops_the_queued_model_work_and_counts_499(
    serve: Serve, tiny_engine: ScoringEngine
) -> None:
    """Issue 27 row 4: the model is held busy, four clients send a rerank and hang up; each
    is counted 499 at once and none of their items is left in the batcher's queues."""
    s = await serve()
    gate = threading.Event()
    pool = tiny_engine._executor
    blockers = [pool.submit(gate.wait, 30) for _ in range(2)]  # every worker busy
    try:
        docs = [f"doc {uuid.uuid4().hex} {i} " * 40 for i in range(50)]  # none cached
        body = orjson.dumps({"query": "q", "documents": docs})
        clients = []
        for _ in range(4):
            c = await connect(s.port)
            c[1].write(
                b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            clients.append(c)
        await until(lambda: queued(tiny_engine) >= 4 * 50)
        for _, w in clients:
            w.transport.abort()
        await until(lambda: s.statuses().get("499", 0) == 4)
        assert tiny_engine.batcher._queue == [] and not tiny_engine.batcher._backfill
    finally:
        gate.set()
        for b in blockers:
            b.result()
    assert "200" not in s.statuses()


async def test_a_request_cancelled_by_the_drain_is_not_a_client_hang_up(
    serve: Serve, tiny_engine: ScoringEngine
) -> None:
    """At the drain timeout the server cancels what is left: counted 503, never 499."""
    s = await serve(drain_timeout_s=0.2)
    gate = threading.Event()
    blockers = [tiny_engine._executor.submit(gate.wait, 30) for _ in range(2)]
    try:
        docs = [f"drain {uuid.uuid4().hex} {i}" for i in range(20)]  # none cached
        body = orjson.dumps({"query": "q", "documents": docs})
        c = await connect(s.port)
        c[1].write(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await until(lambda: queued(tiny_engine) >= 20)
        s.runner.app[DRAINING].begin()
        await s.runner.cleanup()  # waits drain_timeout_s, then cancels the handler
        await until(lambda: bool(s.statuses()))  # the cancelled handler's last step
    finally:
        gate.set()
        for b in blockers:
            b.result()
    assert s.statuses() == {"503": 1}
