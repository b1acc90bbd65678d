"""Overload: find the sustainable rate, then send twice that, open loop, for a bounded time.

The sustainable rate is found by a ramp of open-loop rates (x1.5 per step, a few seconds
each): the highest rate answered entirely with 200s, p99 within budget + margin. (A closed
loop would measure concurrency / latency, pinned near the budget by the deadline.)

    .venv/bin/python -m profiles.overload [--seconds 60] [--budget-ms 20] [--root CHECKOUT]

Prints goodput (complete 200s per second: nothing partial, answered within budget +
margin as the client saw it), the statuses, and the ERROR
lines the server logged. Pass: the process stays up, only 200 and 503 come back, every 503
and 504 carries Retry-After, goodput at 2x stays >= 90% of the sustainable rate.
The last line sums the run up (rate, goodput and its ratio, statuses, ERROR lines, checks).
``--root`` serves another checkout's code (e.g. main, for a before/after on one machine).
Run it on a quiet machine: the ratio means nothing when other work takes the cores.
Runs the real service (``python -m app serve``) on the default model and index (``make
model index``). Writes profiles/out/reliability/overload[-LABEL].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from profiles.loadgen import (
    OUT,
    open_loop,
    rss_mb,
    saturation_rps,
    summarize,
)
from profiles.process import ROOT, free_port, serve
from profiles.workloads import unique_queries


class Fresh:
    """Search bodies whose query text never repeats within a run (a repeated query would
    find its encoding cached and cost the model nothing): each ``take`` hands out new ones."""

    def __init__(self, budget_ms: float, n: int) -> None:
        corpus = ROOT / "var" / "corpus" / "stdlib" / "corpus.jsonl"
        texts = list(unique_queries(corpus, 2 * n))
        self._bodies = [
            orjson.dumps({"query": q, "subqueries": [s], "budget_ms": budget_ms})
            for q, s in zip(texts[0::2], texts[1::2], strict=True)
        ]
        self._next = 0

    def take(self, n: int) -> list[bytes]:
        got = self._bodies[self._next : self._next + n]
        if len(got) < n:
            raise RuntimeError("out of unique queries: make Fresh bigger")
        self._next += n
        return got


async def ramp(
    session: aiohttp.ClientSession,
    url: str,
    fresh: Fresh,
    limit_ms: float,
    step_s: float,
    start: float = 20.0,
) -> tuple[float, list[dict[str, Any]]]:
    """The highest open-loop rate (x1.5 steps) answered all 200, at least 95% of them
    complete (goodput), p99 <= ``limit_ms``."""
    best, steps, rate = 0.0, [], start
    while True:
        sent = await open_loop(session, url, fresh.take(int(rate * step_s)), rate, step_s)
        s = summarize(sent, step_s, limit_ms)
        ok = set(s.statuses) == {200} and s.goodput_rps >= 0.95 * rate and s.ok_p99_ms <= limit_ms
        steps.append(
            {"rps": round(rate, 1), "ok": ok, "p99_ms": s.ok_p99_ms, "goodput_rps": s.goodput_rps}
            | {str(k): v for k, v in s.statuses.items()}
        )
        if not ok:
            return best, steps
        best, rate = rate, rate * 1.5
        await asyncio.sleep(1.0)  # let the previous step drain


async def run(
    base: str,
    pid: int,
    seconds: float,
    budget_ms: float,
    margin_ms: float,
    factor: float,
    start: float,
    sustainable: float | None = None,
) -> dict[str, Any]:
    url = f"{base}/v1/search"
    # The ramp's steps (x1.5 from ``start`` up to ~300 req/s), the 10 s step, 2x for
    # ``seconds``, and the warm-up.
    need = int(sum(start * 1.5**k * 5.0 for k in range(12)) + 10 * (sustainable or 0))
    fresh = Fresh(budget_ms, need + int(factor * 400 * seconds) + 2000)
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await saturation_rps(session, url, fresh.take(1000), 4, 3.0)  # warm-up
        if sustainable is None:
            saturation, steps = await ramp(session, url, fresh, budget_ms + margin_ms, 5.0, start)
        else:  # a given rate (the same for a before/after pair): one 10 s step to measure it
            saturation = sustainable
            on_time = budget_ms + margin_ms
            step = fresh.take(int(sustainable * 10.0))
            s = summarize(await open_loop(session, url, step, sustainable, 10.0), 10.0, on_time)
            steps = [
                {"rps": sustainable, "ok": True, "goodput_rps": s.goodput_rps}
                | {str(k): v for k, v in s.statuses.items()}
            ]
        await asyncio.sleep(2.0)
        rate = factor * saturation
        rss_before = rss_mb(pid)
        peak = rss_before
        bodies = fresh.take(int(rate * seconds))
        task = asyncio.ensure_future(open_loop(session, url, bodies, rate, seconds))
        while not task.done():
            await asyncio.sleep(0.5)
            peak = max(peak, rss_mb(pid))
        t0 = time.monotonic()
        samples = task.result()
        drain_s = time.monotonic() - t0
        async with session.get(f"{base}/healthz") as resp:
            alive = resp.status == 200
    summary = summarize(samples, seconds, budget_ms + margin_ms)
    sustainable_goodput = max((st["goodput_rps"] for st in steps if st["ok"]), default=0.0)
    return {
        "saturation_rps": round(saturation, 1),
        "sustainable_goodput_rps": sustainable_goodput,
        "goodput_ratio": round(summary.goodput_rps / sustainable_goodput, 3)
        if sustainable_goodput
        else 0.0,
        "ramp": steps,
        "offered_rps": round(rate, 1),
        "seconds": seconds,
        "budget_ms": budget_ms,
        "summary": summary.as_dict(),
        "rss_mb": {"before": round(rss_before, 1), "peak": round(peak, 1)},
        "alive_after": alive,
        "drain_s": round(drain_s, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--budget-ms", type=float, default=20.0, help="the server's default")
    ap.add_argument("--max-in-flight", type=int, default=None, help="default: the server's")
    ap.add_argument("--root", type=Path, default=None, help="serve this checkout's code")
    ap.add_argument("--label", default="", help="suffix of the output file")
    ap.add_argument("--factor", type=float, default=2.0, help="offered load / saturation")
    ap.add_argument("--margin-ms", type=float, default=100.0)
    ap.add_argument("--start-rps", type=float, default=20.0, help="the ramp's first rate")
    ap.add_argument("--rate", type=float, default=None, help="the sustainable rate, given: no ramp")
    ap.add_argument("--server-args", default="", help="more `app serve` flags, e.g. '--threads 1'")
    args = ap.parse_args()
    port = free_port()
    flags = ["--log-level", "WARNING", "--budget-ms", str(args.budget_ms)]
    if args.max_in_flight is not None:
        flags += ["--max-in-flight", str(args.max_in_flight)]
    flags += ["--data-dir", str(ROOT / "var"), *args.server_args.split()]
    root = (args.root or ROOT).resolve()
    with serve(flags, port, OUT, root=root) as proc:
        res = asyncio.run(
            run(
                f"http://127.0.0.1:{port}",
                proc.pid,
                args.seconds,
                args.budget_ms,
                args.margin_ms,
                args.factor,
                args.start_rps,
                args.rate,
            )
        )
        res["exit_code_while_running"] = proc.poll()
    log = (OUT / f"server-{port}.log").read_text(errors="replace").splitlines()
    res["error_log_lines"] = sum(1 for ln in log if '"level":"ERROR"' in ln or " ERROR " in ln)
    res["log_lines"] = len(log)
    s = res["summary"]
    checks = {
        "alive": res["alive_after"] and res["exit_code_while_running"] is None,
        "only_200_503": set(s["statuses"]) <= {"200", "503"},
        "retry_after_on_every_503_504": s["unavailable_without_retry_after"] == 0,
        "goodput_at_least_90pct_of_sustainable": res["goodput_ratio"] >= 0.9,
    }
    res["root"] = str(root)
    res["max_in_flight"] = args.max_in_flight
    res["server_args"] = args.server_args
    res["checks"] = checks
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"overload-{args.label}.json" if args.label else "overload.json"
    (OUT / name).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(headline(res))
    return 0 if all(checks.values()) else 1


def headline(res: dict[str, Any]) -> str:
    """The run in one line: what the lead reads first (the JSON above has the rest)."""
    s = res["summary"]
    failed = [k for k, ok in res["checks"].items() if not ok]
    return (
        f"overload: {res['offered_rps']} req/s ({res['offered_rps'] / res['saturation_rps']:g}x "
        f"{res['saturation_rps']}) for {res['seconds']:g} s: goodput {s['goodput_rps']} req/s "
        f"= {res['goodput_ratio']:.0%} of the sustainable {res['sustainable_goodput_rps']}; "
        f"statuses {s['statuses']}; ERROR log lines {res['error_log_lines']}; "
        f"{'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}"
    )


if __name__ == "__main__":
    sys.exit(main())
