"""Memory and late work under unique documents: the issue-16 probe as a script.

    .venv/bin/python -m profiles.memory [--requests 300] [--concurrency 8] \
        [--cache-mb 8] [--max-length 16] [--serve-arg=--batch-tokens=2048 ...]

Starts the real service (``python -m app serve``, default model and index: ``make model
index``), sends ``--requests`` ``/v1/rerank`` requests of 50 distinct ~2 KB documents each
(no document is ever sent twice: nothing is served from the cache), samples the server's
RSS during the load and its CPU use after it, and checks the documented bound
(docs/RELIABILITY.md): RSS <= model + arena + cache_mb + margin, and idle (< 10% of a core)
within 2 s of the last answer. Writes profiles/out/reliability/memory.json; exit 1 when a
bound is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from profiles.loadgen import OUT, clients, cpu_seconds, rss_mb
from profiles.process import free_port, serve

DOCS_PER_REQUEST = 50
DOC_BYTES = 2048
# The documented bound (docs/RELIABILITY.md): the process after start-up (model, tokenizer,
# index, interpreter) + ONNX Runtime's working memory for one full call + the cache + margin.
ARENA_MB = 120.0
MARGIN_MB = 60.0
IDLE_CPU = 0.10  # of one core
IDLE_WITHIN_S = 2.0


def document(n: int) -> str:
    """~2 KB of words unique to ``n``: every document the run sends is new."""
    words = [f"w{n}x{i}" for i in range(DOC_BYTES // 8)]
    return " ".join(words)[:DOC_BYTES]


async def drive(base: str, pid: int, requests: int, concurrency: int) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    partial = 0
    scored = 0  # documents model-scored in the 200 answers
    no_retry_after = 0  # 503s without Retry-After
    peak = rss_mb(pid)

    async with aiohttp.ClientSession() as session:

        async def send(r: int) -> bool:
            nonlocal partial, scored, no_retry_after, peak
            docs = [document(r * DOCS_PER_REQUEST + i) for i in range(DOCS_PER_REQUEST)]
            body = {"query": f"query {r}", "documents": docs}
            async with session.post(f"{base}/v1/rerank", json=body) as resp:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    meta = (await resp.json())["meta"]
                    partial += bool(meta["partial"])
                    scored += int(meta["scored"])
                elif resp.status == 503:
                    no_retry_after += "Retry-After" not in resp.headers
            peak = max(peak, rss_mb(pid))
            return True

        await clients(send, concurrency, requests=requests)
    return {
        "statuses": statuses,
        "partial": partial,
        "documents_scored_in_200s": scored,
        "documents_in_200s": statuses.get(200, 0) * DOCS_PER_REQUEST,
        "503_without_retry_after": no_retry_after,
        "peak_rss_mb": round(peak, 1),
    }


def idle_after(pid: int, window_s: float = 0.25, limit_s: float = 30.0) -> float:
    """Seconds from now until a ``window_s`` window uses under IDLE_CPU of a core."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(window_s)
        if (cpu_seconds(pid) - c0) / (time.monotonic() - w0) < IDLE_CPU:
            return round(time.monotonic() - t0 - window_s, 2)
    return limit_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cache-mb", type=float, default=8.0)
    ap.add_argument("--max-length", type=int, default=16)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `serve` flag")
    args = ap.parse_args()
    flags = [f"--cache-mb={args.cache_mb}", f"--max-length={args.max_length}", *args.serve_arg]
    port = free_port()
    with serve(flags, port, OUT) as proc:
        base = f"http://127.0.0.1:{port}"
        start_rss = rss_mb(proc.pid)
        t0 = time.monotonic()
        load = asyncio.run(drive(base, proc.pid, args.requests, args.concurrency))
        load_s = time.monotonic() - t0
        idle_s = idle_after(proc.pid)
        end_rss = rss_mb(proc.pid)
    bound = start_rss + ARENA_MB + args.cache_mb + MARGIN_MB
    report = {
        "flags": flags,
        "requests": args.requests,
        "documents": args.requests * DOCS_PER_REQUEST,
        "load_s": round(load_s, 1),
        **load,
        "start_rss_mb": round(start_rss, 1),
        "end_rss_mb": round(end_rss, 1),
        "bound_rss_mb": round(bound, 1),
        "idle_after_s": idle_s,
    }
    out = OUT / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = load["peak_rss_mb"] <= bound and idle_s <= IDLE_WITHIN_S
    print("within bounds" if ok else "OUT OF BOUNDS", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
