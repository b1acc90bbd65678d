"""`make bench`'s steps (profiles/load.py, profiles/cluster_load.py): what one variant's
answers at one offered rate came to, the load that makes them, and the server's counters and
CPU around each step."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import aiohttp

from profiles.loadgen import clients, cpu_seconds, paced, pct_ms, scrape


class Step:
    """What one variant's answers at one offered rate came to (several rounds pooled)."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.errors: dict[str, int] = {}
        self.scored = 0
        self.candidates = 0
        self.sent = 0
        self.calls = 0.0  # model calls, from the server's /metrics around each step
        self.texts = 0.0
        self.requests = 0.0
        self.server_cpu = 0.0  # CPU seconds the server process used during the step
        self.client_cpu = 0.0  # and this load generator
        self.threads: dict[str, float] = {}  # server CPU seconds by thread group (/metrics)
        self.runq_wait = 0.0  # seconds the server's threads waited for a core
        self.timed: list[tuple[float, dict[str, float]]] = []  # (latency, body timings)

    def add(self, status: str, seconds: float, body: dict[str, Any] | None) -> None:
        self.sent += 1
        if status != "200" or body is None:
            self.errors[status] = self.errors.get(status, 0) + 1
            return
        self.lat.append(seconds)
        self.timed.append((seconds, body.get("timings") or {}))
        self.scored += int(body["scored"])
        self.candidates += int(body["candidates"])

    def slowest(self) -> dict[str, Any] | None:
        """Where the slowest 1% of answers spent their time: the median of each stage the
        server timed, and of what lies outside its handler (client latency minus the
        server's total: the accept queue, the loop's backlog, the wire)."""
        if not self.timed:
            return None
        cut = sorted(self.timed, key=lambda t: t[0])[-max(1, len(self.timed) // 100) :]
        stages: dict[str, list[float]] = {}
        for secs, timings in cut:
            for k, v in timings.items():
                stages.setdefault(k, []).append(v)
            stages.setdefault("outside", []).append(1000 * secs - timings.get("total", 0.0))
        return {
            "requests": len(cut),
            "latency_ms": pct_ms([t[0] for t in cut], 0.5),
            **{k: round(sorted(v)[len(v) // 2], 2) for k, v in stages.items()},
        }

    def summary(self) -> dict[str, Any]:
        per_request = 1000 / self.sent if self.sent else 0.0
        return {
            "sent": self.sent,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "p50": pct_ms(self.lat, 0.5),
            "p99": pct_ms(self.lat, 0.99),
            "scored_fraction": round(self.scored / self.candidates, 3) if self.candidates else None,
            "model_calls_per_request": round(self.calls / self.requests, 2)
            if self.requests
            else None,
            "texts_per_call": round(self.texts / self.calls, 2) if self.calls else None,
            # What a request costs the cores: the rate the machine can hold is about
            # cores / (server + client CPU per request).
            "server_cpu_ms_per_request": round(1000 * self.server_cpu / self.sent, 2)
            if self.sent
            else None,
            # Which thread a rate runs out of, and whether the cores themselves were short.
            "thread_cpu_ms_per_request": {
                k: round(v * per_request, 2) for k, v in sorted(self.threads.items())
            },
            "runqueue_wait_ms_per_request": round(self.runq_wait * per_request, 2),
            "slowest_1pct": self.slowest(),
            "client_cpu_ms_per_request": round(1000 * self.client_cpu / self.sent, 2)
            if self.sent
            else None,
        }


async def post(
    s: aiohttp.ClientSession, url: str, payload: dict[str, Any]
) -> tuple[str, float, dict[str, Any] | None]:
    t0 = time.perf_counter()
    try:
        async with s.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=10)) as r:
            raw = await r.read()
            dt = time.perf_counter() - t0
            return str(r.status), dt, json.loads(raw) if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, time.perf_counter() - t0, None


async def sequential(base: str, queries: Iterator[str], n: int, step: Step) -> None:
    async with aiohttp.ClientSession() as s:

        async def send(i: int) -> bool:
            step.add(*await post(s, base + "/v1/search", {"query": next(queries)}))
            return True

        await clients(send, 1, requests=n)


async def at_rate(
    base: str, queries: Iterator[str], rate: float, seconds: float, step: Step
) -> None:
    """Requests leave at fixed instants whatever the server does: queueing shows up as
    latency instead of silently lowering the offered load."""
    url = base + "/v1/search"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        def send(i: int, due: float) -> Awaitable[tuple[str, float, dict[str, Any] | None]]:
            return post(s, url, {"query": next(queries)})

        for res in await paced(send, rate, seconds):
            step.add(*res)


COUNTERS = {
    "calls": ("rerank_batch_size_count", frozenset()),
    "texts": ("rerank_batch_size_sum", frozenset()),
    "requests": (
        "rerank_http_requests_total",
        frozenset({"endpoint": "/v1/search", "method": "POST", "status": "200"}.items()),
    ),
}


THREAD_CPU = "rerank_thread_cpu_seconds_total"
THREAD_WAIT = "rerank_thread_runqueue_wait_seconds_total"


async def counters(base: str) -> dict[str, float]:
    """The COUNTERS, plus ``cpu:<thread group>`` and ``wait`` (all groups' run-queue wait)."""
    m = await scrape(base)
    out = {k: m.get(key, 0.0) for k, key in COUNTERS.items()}
    out["wait"] = 0.0
    for (name, labels), v in m.items():
        group = dict(labels).get("thread", "")
        if name == THREAD_CPU:
            out[f"cpu:{group}"] = v
        elif name == THREAD_WAIT:
            out["wait"] += v
    return out


def measured(base: str, pid: int, step: Step, run: Any) -> None:
    """Run one step's coroutine and add the server's model calls and requests it made,
    and the CPU the server and this process spent on it."""
    before = asyncio.run(counters(base))
    cpu0, mine0 = cpu_seconds(pid), time.process_time()
    asyncio.run(run)
    step.server_cpu += cpu_seconds(pid) - cpu0
    step.client_cpu += time.process_time() - mine0
    after = asyncio.run(counters(base))
    step.calls += after["calls"] - before["calls"]
    step.texts += after["texts"] - before["texts"]
    step.requests += after["requests"] - before["requests"]
    step.runq_wait += after["wait"] - before["wait"]
    for k, v in after.items():
        if k.startswith("cpu:"):
            group = k[4:]
            step.threads[group] = step.threads.get(group, 0.0) + v - before.get(k, 0.0)
