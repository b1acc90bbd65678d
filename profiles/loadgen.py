"""Shared by the reliability runs (overload, soak, fuzz) and their short CI versions: drive
open-loop load, read the server's RSS (the process itself: profiles/process.py).

Open loop: requests go out on a fixed schedule whatever the server does, as real traffic
does; a closed loop would slow down with the server and hide overload.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "out" / "reliability"

# Queries on the default corpus (standard-library docstrings).
QUERIES = [
    "sort a list in place",
    "open a file for reading",
    "thread lock acquire release",
    "parse json string",
    "regular expression match groups",
    "current date and time",
    "http request headers",
    "random number between",
    "path exists directory",
    "decode bytes to string",
    "socket connect timeout",
    "subprocess output pipe",
    "iterate dictionary keys values",
    "copy a file",
    "format a decimal number",
    "compress data gzip",
]


def search_payloads(budget_ms: float | None = None) -> list[bytes]:
    extra = {} if budget_ms is None else {"budget_ms": budget_ms}
    return [
        orjson.dumps({"query": q, "subqueries": [QUERIES[(i + 1) % len(QUERIES)]], **extra})
        for i, q in enumerate(QUERIES)
    ]


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


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


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
    headers = {"Content-Type": "application/json", **(headers or {})}
    t0 = time.monotonic()
    tasks = []
    n = int(rate * duration_s)
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(
            asyncio.ensure_future(_one(session, url, payloads[i % len(payloads)], due, headers))
        )
    return list(await asyncio.gather(*tasks))


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    payloads: Sequence[bytes],
    concurrency: int,
    duration_s: float,
) -> float:
    """The saturation rate: 200s per second with ``concurrency`` requests always out."""
    done = 0
    end = time.monotonic() + duration_s
    headers = {"Content-Type": "application/json"}

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.monotonic() < end:
            s = await _one(session, url, payloads[i % len(payloads)], time.monotonic(), headers)
            done += s.status == 200
            i += concurrency

    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.monotonic() - t0)


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
