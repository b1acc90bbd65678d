"""Fair use of the connection slots: who gets one, and which idle one gives it back.

An idle keep-alive connection costs a slot until the keep-alive timeout (75 s). Without
this, one client that opens ``max_connections`` of them locks everyone else out for that
long. So, as nginx does with its reusable connections: when the cap is reached, the idle
keep-alive connections that have waited longest are closed first (a kept-alive connection
may be closed at any time between requests; HTTP clients retry on a fresh one), and only
when none is idle is the new connection refused. One client address may hold at most
``max_connections_per_client``; past it, its own idle connections are reclaimed first.

The admin listener (``--admin-port``: probes and ``/metrics``) has its own pool, so a
saturated data port never hides the health of the process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Conn(Protocol):
    client: str

    def reclaimable(self) -> bool: ...
    def buffered(self) -> int: ...
    def last_active(self) -> float: ...
    def reclaim(self) -> None: ...


# At most this many idle connections closed at once (nginx's ngx_drain_connections uses 32):
# the O(n) scan for the oldest is paid once per batch, not per accept.
RECLAIM_BATCH = 32
# The admin listener's own cap: probes and scrapes, a handful at a time.
ADMIN_CONNECTIONS = 64


class ConnPool:
    """The open connections of one listener group, with the caps and the reclaim order."""

    def __init__(self, cap: int, per_client: int) -> None:
        self.cap = cap
        self.per_client = per_client  # 0: no per-address cap
        self.conns: dict[Conn, None] = {}
        self.by_client: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.conns)

    def buffered(self) -> int:
        """Bytes of output its connections hold unsent in the process."""
        return sum(c.buffered() for c in self.conns)

    def admit(self, conn: Conn) -> str | None:
        """Take a slot for ``conn``: ``None``, or which cap refused it."""
        full = self.per_client and self.by_client[conn.client] >= self.per_client
        if full and not self._reclaim(conn.client):
            return "max_connections_per_client"
        if len(self.conns) >= self.cap and not self._reclaim(None):
            return "max_connections"
        self.conns[conn] = None
        self.by_client[conn.client] += 1
        return None

    def release(self, conn: Conn) -> bool:
        """Give ``conn``'s slot back (once); False when it held none."""
        if self.conns.pop(conn, 0) is not None:
            return False
        self.by_client[conn.client] -= 1
        if self.by_client[conn.client] <= 0:
            del self.by_client[conn.client]
        return True

    def _reclaim(self, client: str | None) -> int:
        idle = [c for c in self.conns if (client is None or c.client == client) and c.reclaimable()]
        idle.sort(key=lambda c: c.last_active())
        for c in idle[:RECLAIM_BATCH]:
            self.release(c)
            c.reclaim()
        return min(len(idle), RECLAIM_BATCH)


@dataclass
class ConnStats:
    """Connection counts of one process (mutable: updated by every connection)."""

    open: int = 0
    peak: int = 0
    refused: int = 0  # over max_connections or max_connections_per_client
    reclaimed: int = 0  # idle keep-alive connections closed to make room
    write_timeouts: int = 0
    header_timeouts: int = 0
    parse_errors: int = 0
    pools: list[ConnPool] = field(default_factory=list)  # the server's, once it runs


def raw_response(status: int, body: bytes, request_id: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response, for the paths where aiohttp has no request to answer."""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ConnCollector(Collector):
    """``ConnStats`` on ``/metrics``: events that never reach the app's middlewares."""

    def __init__(self, stats: ConnStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        yield GaugeMetricFamily("rerank_http_connections_open", "Open connections", st.open)
        yield GaugeMetricFamily(
            "rerank_http_write_buffered_bytes",
            "Bytes of answers waiting in the process for slow readers (--write-buffer-bytes "
            "at most per connection)",
            sum(p.buffered() for p in st.pools),
        )
        for name, value, text in (
            ("refused", st.refused, "Connections refused over a connection cap"),
            ("reclaimed", st.reclaimed, "Idle keep-alive connections closed to make room"),
            ("write_timeouts", st.write_timeouts, "Connections dropped by --write-timeout-s"),
            ("header_timeouts", st.header_timeouts, "Connections closed by --header-timeout-s"),
            ("parse_errors", st.parse_errors, "Requests the HTTP parser rejected (4xx)"),
        ):
            yield CounterMetricFamily(f"rerank_http_connections_{name}", text, value)


__all__ = [
    "ADMIN_CONNECTIONS",
    "RECLAIM_BATCH",
    "Conn",
    "ConnCollector",
    "ConnPool",
    "ConnStats",
    "raw_response",
]
