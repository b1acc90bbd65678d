"""Soak: steady open-loop load for N minutes, the server's RSS sampled every minute, growth
after warm-up reported (target < 5% over an hour).

    .venv/bin/python -m profiles.soak [--minutes 60] [--rate 40] [--warmup-s 60]

Runs the real service (``python -m app serve``) on the default model and index (``make
model index``); writes profiles/out/reliability/soak.json.
``tests/integration/test_soak.py`` runs the
same loop for a few seconds in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from profiles.loadgen import OUT, open_loop, rss_mb, summarize
from profiles.process import free_port, serve
from profiles.workloads import search_payloads


async def soak(
    base: str,
    pid: int,
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    sample_s: float,
    payloads: list[bytes] | None = None,
) -> dict[str, Any]:
    """Warm up, then ``duration_s`` of load at ``rate``; RSS every ``sample_s``."""
    url = f"{base}/v1/search"
    payloads = payloads or search_payloads()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        if warmup_s > 0:
            await open_loop(session, url, payloads, rate, warmup_s)
        t0 = time.monotonic()
        samples = [(0.0, rss_mb(pid))]
        task = asyncio.ensure_future(open_loop(session, url, payloads, rate, duration_s))
        next_at = t0 + sample_s
        while not task.done():
            await asyncio.sleep(min(0.5, max(0.0, next_at - time.monotonic())))
            if time.monotonic() >= next_at:
                samples.append((round(time.monotonic() - t0, 1), rss_mb(pid)))
                next_at += sample_s
        results = task.result()
        samples.append((round(time.monotonic() - t0, 1), rss_mb(pid)))
    first, last = samples[0][1], samples[-1][1]
    return {
        "rate_rps": rate,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "summary": summarize(results, duration_s).as_dict(),
        "rss_mb": [(t, round(m, 1)) for t, m in samples],
        "rss_growth_pct": round(100.0 * (last - first) / first, 2),
        "rss_peak_mb": round(max(m for _, m in samples), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second")
    ap.add_argument("--warmup-s", type=float, default=60.0)
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--budget-ms", type=float, default=50.0)
    ap.add_argument("--server-args", default="", help="more `app serve` flags")
    args = ap.parse_args()
    port = free_port()
    flags = ["--log-level", "WARNING", "--budget-ms", str(args.budget_ms)]
    with serve([*flags, *args.server_args.split()], port, OUT) as proc:
        res = asyncio.run(
            soak(
                f"http://127.0.0.1:{port}",
                proc.pid,
                rate=args.rate,
                warmup_s=args.warmup_s,
                duration_s=args.minutes * 60,
                sample_s=args.sample_s,
            )
        )
        res["alive_after"] = proc.poll() is None
    res["server_args"] = args.server_args
    statuses = res["summary"]["statuses"]
    res["checks"] = {
        "alive": res["alive_after"],
        "no_5xx_or_errors": all(int(s) < 500 and int(s) != 0 for s in statuses),
        "rss_growth_under_5pct": res["rss_growth_pct"] < 5.0,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if all(res["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
