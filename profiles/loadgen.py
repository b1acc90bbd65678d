"""The load library every run uses: open- and closed-loop load, percentiles, the machine's
facts, the server's /metrics, RSS and CPU (the process itself: profiles/process.py; what is
sent: profiles/workloads.py).

Open loop: requests go out on a fixed schedule whatever the server does, as real traffic
does; a closed loop would slow down with the server and hide overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "out" / "reliability"
T = TypeVar("T")
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def paced(send: Callable[[int, float], Awaitable[T]], rate: float, seconds: float) -> list[T]:
    """Open loop: ``send(i, due)`` for request i starts at ``due`` = t0 + i / ``rate``
    whatever the earlier ones do, so queueing shows up as latency instead of silently
    lowering the offered load; their results in order."""
    t0 = time.monotonic()
    tasks = []
    for i in range(int(rate * seconds)):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(i, due)))
    return list(await asyncio.gather(*tasks))


async def clients(
    send: Callable[[int], Awaitable[bool]],
    concurrency: int,
    seconds: float = math.inf,
    requests: int | None = None,
) -> tuple[list[float], float]:
    """Closed loop: ``concurrency`` clients, each sending its next request when answered,
    until ``seconds`` pass or ``requests`` are sent. ``send(i)`` sends request i (numbered
    across clients) and says whether it counts. The latencies (s) of those that count, and
    the wall time."""
    latencies: list[float] = []
    numbers = itertools.count()
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            i = next(numbers)
            if requests is not None and i >= requests:
                return
            t0 = time.perf_counter()
            if await send(i):
                latencies.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.monotonic() - t0


def nearest_rank(xs: Sequence[float], q: float) -> float:
    """The value at rank ``q`` (a fraction) of ``xs``, sorted; ``xs`` not empty."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def pct_ms(seconds: Sequence[float], q: float) -> float | None:
    """:func:`nearest_rank` of latencies in seconds, in ms (2 decimals); None when empty."""
    return round(nearest_rank(seconds, q) * 1000, 2) if seconds else None


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (1-99), interpolated; 0.0 when empty."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def stats_ms(xs: Sequence[float]) -> dict[str, float]:
    """Count, median, p95 and p99 (interpolated) of latencies in seconds, in ms."""
    import numpy as np

    a = np.asarray(xs) * 1000.0
    return {
        "n": len(a),
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
    }


def cpu_name() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return cpu


def machine(vnni: bool = False) -> dict[str, Any]:
    """CPU, cores this process may use, Python, load average; ``vnni``: and whether int8
    has AVX-512 VNNI to run on."""
    facts: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg()[0],
    }
    if vnni:
        flags = ""
        with contextlib.suppress(OSError):
            flags = Path("/proc/cpuinfo").read_text()
        facts["avx512_vnni"] = "avx512_vnni" in flags
    return facts


def parse_metrics(text: str) -> Metrics:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def scrape(base: str) -> Metrics:
    """The server's ``/metrics``, parsed."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        return parse_metrics(await r.text())


@dataclass
class Sample:
    sent: float  # monotonic instant the request was due
    status: int  # 0: no answer (connection error or client timeout)
    seconds: float
    retry_after: str | None = None
    error: str | None = None
    complete: bool = False  # a 200 with nothing missing (not partial): goodput


@dataclass
class Summary:
    sent: int
    statuses: dict[int, int]
    ok_p50_ms: float
    ok_p99_ms: float
    rejected_p99_ms: float
    rejected_without_retry_after: int
    achieved_rps: float
    errors: list[str] = field(default_factory=list)
    goodput_rps: float = 0.0  # complete 200s (nothing partial) per second
    unavailable_without_retry_after: int = 0  # 503s and 504s

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        return d


def summarize(
    samples: Sequence[Sample], duration_s: float, on_time_ms: float | None = None
) -> Summary:
    """``on_time_ms``: goodput counts only complete answers within it (all, when None)."""
    limit_s = math.inf if on_time_ms is None else on_time_ms / 1000
    statuses: dict[int, int] = {}
    for s in samples:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    ok = [s.seconds * 1000 for s in samples if s.status == 200]
    rej = [s for s in samples if s.status == 503]
    return Summary(
        sent=len(samples),
        statuses=statuses,
        ok_p50_ms=round(pct(ok, 50), 2),
        ok_p99_ms=round(pct(ok, 99), 2),
        rejected_p99_ms=round(pct([s.seconds * 1000 for s in rej], 99), 2),
        rejected_without_retry_after=sum(1 for s in rej if not s.retry_after),
        achieved_rps=round(len(ok) / duration_s, 1) if duration_s else 0.0,
        errors=sorted({s.error for s in samples if s.error})[:5],
        goodput_rps=round(sum(s.complete and s.seconds <= limit_s for s in samples) / duration_s, 1)
        if duration_s
        else 0.0,
        unavailable_without_retry_after=sum(
            1 for s in samples if s.status in (503, 504) and not s.retry_after
        ),
    )


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, due: float, headers: dict[str, str]
) -> Sample:
    t0 = time.monotonic()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            got = await resp.read()
            complete = resp.status == 200 and b'"partial":true' not in got
            took = time.monotonic() - t0
            return Sample(due, resp.status, took, resp.headers.get("Retry-After"), None, complete)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(due, 0, time.monotonic() - t0, error=type(exc).__name__)


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    payloads: Sequence[bytes],
    rate: float,
    duration_s: float,
    headers: dict[str, str] | None = None,
) -> list[Sample]:
    """Send ``rate`` requests per second for ``duration_s``, on schedule."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}

    def send(i: int, due: float) -> Awaitable[Sample]:
        return _one(session, url, payloads[i % len(payloads)], due, hdrs)

    return await paced(send, rate, duration_s)


async def saturation_rps(
    session: aiohttp.ClientSession,
    url: str,
    payloads: Sequence[bytes],
    concurrency: int,
    duration_s: float,
) -> float:
    """The saturation rate: 200s per second with ``concurrency`` requests always out."""
    headers = {"Content-Type": "application/json"}

    async def send(i: int) -> bool:
        s = await _one(session, url, payloads[i % len(payloads)], time.monotonic(), headers)
        return s.status == 200

    ok, wall = await clients(send, concurrency, duration_s)
    return len(ok) / wall


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` from /proc (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its threads so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
