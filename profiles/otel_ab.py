"""What tracing costs on the request path, and what a failing collector adds to that.

    .venv/bin/python -m profiles.otel_ab [--requests 300] [--budget-ms 1000]

One process serves the same app (the `make serve` set-up: default model, embedded index,
one engine) three times on loopback:

- ``off``: no endpoint (what every deployment without a collector runs);
- ``ok``: ``--otlp-endpoint`` at a collector that takes every export (a separate process
  answering 200, so receiving costs this process nothing);
- ``hole``: ``--otlp-endpoint`` at a black hole: a port whose kernel accepts connections
  that nothing ever reads or answers, so every export waits out its timeout and the queue
  overflows (spans dropped and counted).

Sequential ``/v1/search`` requests with unique queries and a budget every answer fits in
go to the three in turn, the order rotating each round, so a shared, drifting host weighs
on all alike. The report: each side's latency percentiles and statuses, the median of the
paired differences (on - off: what tracing costs; hole - ok: what the collector's failure
adds), and the trace counters of the two tracing sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from app.config import Config
from app.otel import Telemetry
from app.server import create_app
from app.services import open_services
from profiles.loadgen import nearest_rank
from profiles.process import free_port
from profiles.workloads import unique_queries

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("off", "ok", "hole")
# A collector that takes everything: reads the body, answers 200 (an empty
# ExportTraceServiceResponse is zero bytes of protobuf).
SINK = """
import sys
from aiohttp import web
async def take(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 2**20)
app.router.add_post("/v1/traces", take)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _pcts(xs: list[float]) -> dict[str, float]:
    return {
        "p50": round(nearest_rank(xs, 0.5), 3),
        "p90": round(nearest_rank(xs, 0.9), 3),
        "p99": round(nearest_rank(xs, 0.99), 3),
        "mean": round(statistics.fmean(xs), 3),
    }


def _paired(a: list[float], b: list[float]) -> dict[str, float]:
    d = [y - x for x, y in zip(a, b, strict=True)]
    return {"median": round(statistics.median(d), 3), "mean": round(statistics.fmean(d), 3)}


async def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("the collector process did not start")


async def main(args: Any, sink_port: int) -> dict[str, Any]:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(4096)  # connections complete in the kernel; nothing reads or answers
    await _wait_port(sink_port)
    base = Config().override(
        data_dir=ROOT / "var", budget_ms=args.budget_ms, otlp_queue_spans=args.queue_spans
    )
    endpoints = {
        "ok": f"http://127.0.0.1:{sink_port}",
        "hole": f"http://127.0.0.1:{hole.getsockname()[1]}",
    }
    svc = await open_services(base)
    runners, urls = [], {}
    for side in SIDES:
        cfg = base.override(otlp_endpoint=endpoints.get(side))
        tel = Telemetry(cfg.tracing) if side in endpoints else None
        runner, urls[side] = await _site(create_app(cfg, svc, telemetry=tel))
        runners.append(runner)
    corpus = ROOT / "var" / "corpus" / "stdlib" / "corpus.jsonl"
    queries = unique_queries(corpus, len(SIDES) * (args.requests + 20))
    took: dict[str, list[float]] = {s: [] for s in SIDES}
    statuses: dict[str, dict[int, int]] = {s: {} for s in SIDES}
    counters: dict[str, list[str]] = {}
    try:
        async with aiohttp.ClientSession() as http:

            async def one(side: str, record: bool) -> None:
                t0 = time.perf_counter()
                body = {"query": next(queries)}
                async with http.post(urls[side] + "/v1/search", json=body) as r:
                    await r.read()
                if record:
                    took[side].append((time.perf_counter() - t0) * 1000.0)
                    statuses[side][r.status] = statuses[side].get(r.status, 0) + 1

            for _ in range(20):  # warm every path and connection
                for side in SIDES:
                    await one(side, False)
            for i in range(args.requests):
                k = i % len(SIDES)
                for side in SIDES[k:] + SIDES[:k]:
                    await one(side, True)
            for side in endpoints:
                text = await (await http.get(urls[side] + "/metrics")).text()
                counters[side] = [x for x in text.splitlines() if x.startswith("rerank_trace_")]
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await svc.close()
        hole.close()
    return {
        "requests_per_side": args.requests,
        "queue_spans": args.queue_spans,
        "budget_ms": args.budget_ms,
        "latency_ms": {s: _pcts(took[s]) for s in SIDES},
        "statuses": statuses,
        "paired_ms": {
            "ok - off (tracing on)": _paired(took["off"], took["ok"]),
            "hole - off": _paired(took["off"], took["hole"]),
            "hole - ok (the collector failing)": _paired(took["ok"], took["hole"]),
        },
        "trace_counters": counters,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="per side (300)")
    ap.add_argument("--budget-ms", type=float, default=1000.0, help="every answer fits (1000)")
    ap.add_argument(
        "--queue-spans", type=int, default=2048, help="export queue (2048; less: hole overflows)"
    )
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        print(json.dumps(asyncio.run(main(ap.parse_args(), port)), indent=2))
    finally:
        sink.terminate()
        sink.wait(10)
