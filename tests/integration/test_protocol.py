"""Slow and abusive clients against the production app, served by the runner ``serve`` uses
(``app.server.make_runner``: the connection guards exist only there), over raw loopback
sockets. Every timeout is ``T`` seconds, so each test takes well under two seconds."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from app.config import Config
from app.http import IN_FLIGHT
from app.metrics import Metrics
from app.protocol import GuardedRunner
from app.server import create_app, make_runner
from app.services import Services
from rerank.engine import ScoringEngine
from retrieval.embedded.search import EmbeddedBackend

T = 0.4  # every timeout in these tests
FAST = {
    "max_body_bytes": 1000,
    "header_timeout_s": T,
    "body_timeout_s": T,
    "keepalive_timeout_s": 1.0,
    "lingering_s": 0.2,
    "max_connections": 8,
    "budget_ms": 2000,
}
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


@dataclass
class Served:
    port: int
    runner: GuardedRunner
    app: web.Application
    metrics: Metrics

    def statuses(self) -> dict[str, int]:
        """``rerank_http_requests_total`` by status, summed over endpoints."""
        out: dict[str, int] = {}
        for metric in self.metrics.requests.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.value:
                    out[s.labels["status"]] = out.get(s.labels["status"], 0) + int(s.value)
        return out


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(engine: ScoringEngine, small_backend: EmbeddedBackend) -> AsyncIterator[Serve]:
    started: list[Served] = []

    async def start(**overrides: object) -> Served:
        cfg = Config().override(**{**FAST, **overrides})
        metrics = Metrics()
        app = create_app(cfg, Services(cfg, engine, small_backend), metrics)  # type: ignore[arg-type]
        runner = make_runner(app, cfg)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        served = Served(port, runner, app, metrics)
        started.append(served)
        return served

    yield start
    for s in started:
        await s.runner.cleanup()


@pytest.fixture
async def srv(serve: Serve) -> Served:
    return await serve()


async def connect(s: Served) -> tuple[Reader, Writer]:
    return await asyncio.open_connection("127.0.0.1", s.port)


async def read_response(r: Reader, timeout: float = 3.0) -> tuple[int, dict[str, str], bytes]:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines[1:] if ln)}
        body = await r.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def eof_within(r: Reader, timeout: float) -> float:  # noqa: ASYNC109
    """Seconds until the server closed the connection (fails past ``timeout``)."""
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await r.read(65536):
                    break
            except ConnectionResetError:
                break
    return time.monotonic() - t0


def post(body: bytes, extra: str = "", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (
        f"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {n}\r\n{extra}\r\n"
    ).encode() + body


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
SEARCH = b'{"query": "python sorting"}'


async def search_once(s: Served) -> float:
    t0 = time.monotonic()
    r, w = await connect(s)
    w.write(post(SEARCH))
    status, _, body = await read_response(r)
    w.close()
    assert status == 200, body
    return time.monotonic() - t0


async def until(cond: Callable[[], bool], timeout_s: float = 1.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# Declared size -----------------------------------------------------------------------------
async def test_declared_length_refused_before_reading(srv: Served) -> None:
    r, w = await connect(srv)
    w.write(post(b"", length=10_485_760))  # headers only: the body never comes
    status, headers, body = await read_response(r, timeout=1.0)
    err = orjson.loads(body)["error"]
    assert status == 413 and headers["connection"] == "close"
    assert err["code"] == "body_too_large" and "10485760" in err["message"]
    assert err["request_id"] == headers["x-request-id"]
    assert await eof_within(r, 1.0) < 0.5
    assert srv.app[IN_FLIGHT].peak_scoring == 0 and srv.statuses() == {"413": 1}


async def test_declared_length_refused_while_client_keeps_sending(srv: Served) -> None:
    r, w = await connect(srv)
    w.write(post(b"x" * 200_000, length=10_485_760))
    assert (await read_response(r, timeout=1.0))[0] == 413


@pytest.mark.parametrize("ok", [True, False], ids=["small", "too-large"])
async def test_expect_100_continue_only_within_limit(srv: Served, ok: bool) -> None:
    r, w = await connect(srv)
    n = len(SEARCH) if ok else 10_485_760
    w.write(post(b"", "Expect: 100-continue\r\n", length=n))
    status, _, _ = await read_response(r, timeout=1.0)
    if not ok:
        assert status == 413  # no 100 first: a curl-like client never sends the 10 MB
        return
    assert status == 100
    w.write(SEARCH)
    assert (await read_response(r, timeout=2.0))[0] == 200


async def test_chunked_body_over_limit(srv: Served) -> None:
    r, w = await connect(srv)
    chunk = b"x" * 600
    w.write(
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2
        + b"0\r\n\r\n"
    )
    status, _, body = await read_response(r, timeout=1.0)
    assert status == 413 and orjson.loads(body)["error"]["code"] == "body_too_large"


# Body timeout ------------------------------------------------------------------------------
async def test_body_timeout_408_and_closed(srv: Served) -> None:
    r, w = await connect(srv)
    t0 = time.monotonic()
    w.write(post(b'{"q":', length=100))  # 5 of 100 bytes, then silence
    status, headers, body = await read_response(r, timeout=2.0)
    took = time.monotonic() - t0
    assert status == 408 and headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "body_timeout"
    assert T <= took < T + 0.5
    # closed after the lingering time although the client keeps its socket open
    assert await eof_within(r, 1.0) < 0.2 + 0.3
    assert srv.statuses() == {"408": 1}


async def test_trickling_body_is_bounded_too(srv: Served) -> None:
    r, w = await connect(srv)
    w.write(post(b"", length=100))
    t0 = time.monotonic()
    for _ in range(20):  # one byte every 50 ms: progress, but not fast enough
        w.write(b" ")
        await asyncio.sleep(0.05)
        if r.at_eof() or r._buffer:  # type: ignore[attr-defined]
            break
    status, _, _ = await read_response(r, timeout=2.0)
    assert status == 408 and time.monotonic() - t0 < T + 0.5


# Header timeout ----------------------------------------------------------------------------
async def slowloris(s: Served, first: bytes = b"") -> tuple[float, int | None]:
    """1 header byte per 50 ms; returns (seconds until closed, status of what came back)."""
    r, w = await connect(s)
    if first:
        w.write(first)
        assert (await read_response(r))[0] == 200
    t0 = time.monotonic()
    for b in b"POST /v1/search HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
        try:
            w.write(bytes([b]))
            await asyncio.sleep(0.05)
        except ConnectionError:
            break
        if r._buffer or r.at_eof():  # type: ignore[attr-defined]
            break
    status = None
    if r._buffer:  # type: ignore[attr-defined]
        status = (await read_response(r))[0]
    await eof_within(r, 2.0)
    return time.monotonic() - t0, status


async def test_slowloris_closed_after_header_timeout(srv: Served) -> None:
    task = asyncio.create_task(slowloris(srv))
    await asyncio.sleep(0.1)
    assert await search_once(srv) < 0.3  # normal traffic meanwhile
    took, status = await task
    assert status == 408 and T <= took < T + 0.3
    assert srv.runner.stats.header_timeouts == 1


async def test_slowloris_on_kept_alive_connection(srv: Served) -> None:
    took, status = await slowloris(srv, first=post(SEARCH))
    assert status == 408 and T <= took < T + 0.3


async def test_silent_connection_closed_after_header_timeout(srv: Served) -> None:
    r, _w = await connect(srv)
    t0 = time.monotonic()
    status, headers, body = await read_response(r, timeout=2.0)
    assert status == 408 and T <= time.monotonic() - t0 < T + 0.3
    assert orjson.loads(body)["error"]["request_id"] == headers["x-request-id"]


# Keep-alive idle ---------------------------------------------------------------------------
async def test_keepalive_idle_closed(serve: Serve) -> None:
    # header timeout off: only aiohttp's own keep-alive timer (set from the config) closes
    s = await serve(header_timeout_s=0, keepalive_timeout_s=0.8)
    r, w = await connect(s)
    w.write(GET)
    assert (await read_response(r))[0] == 200
    w.write(GET)  # still alive before the timeout
    assert (await read_response(r))[0] == 200
    took = await eof_within(r, 3.0)
    assert 0.8 - 0.05 <= took < 0.8 + 0.3


# Connection cap ----------------------------------------------------------------------------
async def test_connection_cap(srv: Served) -> None:
    held = [await connect(srv) for _ in range(FAST["max_connections"])]  # type: ignore[call-overload]
    await until(lambda: srv.runner.stats.open == FAST["max_connections"])
    r, w = await connect(srv)
    w.write(GET)
    status, headers, body = await read_response(r, timeout=1.0)
    assert status == 503 and orjson.loads(body)["error"]["code"] == "too_many_connections"
    assert headers["retry-after"] == "1" and "x-request-id" in headers
    for _, hw in held:
        hw.close()
    await until(lambda: srv.runner.stats.open == 0)
    assert srv.runner.stats.refused == 1
    assert await search_once(srv) < 0.5


# Parser errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n", 400),
        (b"BAD\x01LINE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n", 400),
    ],
    ids=["100KB-header", "NUL", "bad-line", "200-headers"],
)
async def test_parser_errors_json(
    srv: Served, raw: bytes, want: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r, w = await connect(srv)
    w.write(raw)
    status, headers, body = await read_response(r, timeout=1.0)
    err = orjson.loads(body)["error"]
    assert status == want and headers["content-type"].startswith("application/json")
    assert set(err) == {"code", "message", "field", "request_id"}
    assert err["request_id"] == headers["x-request-id"] and err["message"]
    assert no_errors_logged(caplog)
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert await eof_within(r, 1.0) < 0.3
    scrape = generate_latest(srv.metrics.registry).decode()
    assert "rerank_http_connections_parse_errors_total 1.0" in scrape


# Client gone -------------------------------------------------------------------------------
async def test_disconnect_mid_body_is_499(srv: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _r, w = await connect(srv)
    w.write(post(b'{"q":', length=100))
    await asyncio.sleep(0.05)
    w.close()
    await until(lambda: bool(srv.statuses()))
    assert srv.statuses() == {"499": 1}
    assert no_errors_logged(caplog)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert gone and all(r.levelno == logging.INFO for r in gone)


async def test_reset_mid_body_is_499(srv: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(post(b'{"q":', length=100))
    await asyncio.sleep(0.05)
    sock.close()  # SO_LINGER 0: an RST, not a FIN
    await until(lambda: bool(srv.statuses()))
    assert srv.statuses() == {"499": 1}
    assert no_errors_logged(caplog)


# Admission ---------------------------------------------------------------------------------
async def test_slow_bodies_take_no_admission_slot(serve: Serve) -> None:
    s = await serve(max_in_flight=1)
    slow = []
    for _ in range(6):
        r, w = await connect(s)
        w.write(post(b"{", length=100))
        slow.append((r, w))
    await asyncio.sleep(0.1)
    assert s.app[IN_FLIGHT].scoring == 0
    assert await search_once(s) < 0.3
    assert s.app[IN_FLIGHT].rejected == 0
    for r, _ in slow:
        assert (await read_response(r))[0] == 408


async def test_64_slow_body_clients_do_not_starve_searches(serve: Serve) -> None:
    """The issue's probe: 64 clients declaring a body and trickling it, at the default
    admission bound of 64. Searches keep answering 200 within their budget."""
    s = await serve(max_in_flight=64, max_connections=128, body_timeout_s=3.0)
    slow = []
    for _ in range(64):
        r, w = await connect(s)
        w.write(post(b"{", length=900))
        slow.append((r, w))
    await until(lambda: s.runner.stats.open == 64)
    budget_s = 0.5
    body = orjson.dumps({"query": "python sorting", "budget_ms": budget_s * 1000})
    for _ in range(10):
        t0 = time.monotonic()
        r, w = await connect(s)
        w.write(post(body))
        status, _, answer = await read_response(r)
        w.close()
        assert status == 200, answer
        assert time.monotonic() - t0 < budget_s + 0.35  # as test_guards: shared cores
    assert s.app[IN_FLIGHT].rejected == 0
    for _, w in slow:
        w.close()
