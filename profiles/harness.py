"""What the two profile commands share: the served process, its load, its metrics.

A run builds what it needs (``workloads.prepare``: default model, an embedded index of
Cranfield or of the default corpus), starts ``python -m app serve`` on a free loopback port
(embedded backend, default config: 20 ms budget), waits for ``/readyz``, drives a
closed-loop load of ``/v1/search`` requests for a set time (``loadgen.clients``), scrapes
``/metrics`` before and after, and stops the server with SIGINT (graceful). Each profile
kind plugs in how the process is started or attached to.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.loadgen import Metrics, clients, pct_ms, scrape
from profiles.process import running
from profiles.workloads import Workload

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "out"
PY = sys.executable


def serve_args(data_dir: Path, wl: Workload, port: int, extra: Sequence[str] = ()) -> list[str]:
    """Arguments after ``python -m app``."""
    return [
        "serve",
        "--data-dir",
        str(data_dir),
        "--index-dir",
        str(wl.index_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


@dataclass
class LoadResult:
    seconds: float
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    partial: int = 0
    errors: int = 0
    before: Metrics = field(default_factory=dict)
    after: Metrics = field(default_factory=dict)

    def moved(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        n = len(lat)
        search = {"endpoint": "/v1/search", "method": "POST", "status": "200"}
        wall = self.moved("rerank_http_request_duration_seconds_sum", **search)
        stages = {
            s: self.moved("rerank_stage_duration_seconds_sum", stage=s)
            for s in ("retrieve", "tokenize", "infer", "respond")
        }
        stages["queue_wait"] = self.moved("rerank_queue_wait_seconds_sum")
        real = self.moved("rerank_tokens_total", kind="real")
        return {
            "seconds": round(self.seconds, 2),
            "concurrency": self.concurrency,
            "requests": n,
            "rps": round(n / self.seconds, 1) if self.seconds else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "partial": self.partial,
            "latency_ms": {
                "p50": pct_ms(lat, 0.5),
                "p95": pct_ms(lat, 0.95),
                "p99": pct_ms(lat, 0.99),
            },
            "server": {
                "requests": self.moved("rerank_http_requests_total", **search),
                "wall_s": wall,
                "stages_s": stages,
                "model_calls": self.moved("rerank_batch_size_count"),
                "queue_waits": self.moved("rerank_queue_wait_seconds_count"),
                "model_call_s": self.moved("rerank_model_call_duration_seconds_sum"),
                "texts_scored": self.moved("rerank_batch_size_sum"),
                "tokens_real": real,
                "tokens_padded": real + self.moved("rerank_tokens_total", kind="padding"),
            },
        }


async def drive(base: str, queries: list[str], seconds: float, concurrency: int) -> LoadResult:
    """Closed loop: ``concurrency`` clients, each sending its next query when answered."""
    import aiohttp

    res = LoadResult(seconds, concurrency)
    res.before = await scrape(base)
    bodies = [json.dumps({"query": q}).encode() for q in queries]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send(i: int) -> bool:
            try:
                async with session.post(
                    base + "/v1/search",
                    data=bodies[i % len(bodies)],
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    payload = await r.read()
                    res.statuses[r.status] = res.statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        res.partial += bool(json.loads(payload)["partial"])
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                res.errors += 1
                return False

        res.latencies, res.seconds = await clients(send, concurrency, seconds)
    res.after = await scrape(base)
    return res


def serve_and_load(
    cmd: Sequence[str],
    port: int,
    out_dir: Path,
    wl: Workload,
    *,
    seconds: float,
    concurrency: int,
    on_ready: Callable[[subprocess.Popen[bytes]], None] = lambda p: None,
    on_done: Callable[[subprocess.Popen[bytes]], None] = lambda p: None,
) -> LoadResult:
    """Start ``cmd`` (a server on ``port``), load it, stop it; its log goes to server.log."""
    base = f"http://127.0.0.1:{port}"
    env = {"RERANK_LOG_FORMAT": "json"}
    with running(cmd, port, out_dir / "server.log", env=env) as proc:
        on_ready(proc)
        print(f"load: {concurrency} clients for {seconds:.0f}s against {base}", flush=True)
        result = asyncio.run(drive(base, wl.queries, seconds, concurrency))
        on_done(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"server exited with {proc.returncode}; see {out_dir / 'server.log'}")
    return result


def load_and_save(
    cmd: Sequence[str],
    port: int,
    out_dir: Path,
    wl: Workload,
    args: Any,
    **hooks: Callable[[subprocess.Popen[bytes]], None],
) -> dict[str, Any]:
    """:func:`serve_and_load` for ``args.seconds`` at ``args.concurrency``; the summary (with
    ``args.serve_arg``) written to load.json and returned."""
    res = serve_and_load(
        cmd, port, out_dir, wl, seconds=args.seconds, concurrency=args.concurrency, **hooks
    )
    summary = res.summary() | {"serve_args": args.serve_arg}
    (out_dir / "load.json").write_text(json.dumps(summary, indent=2))
    return summary


def common_args(description: str) -> Any:
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration (default 20)")
    ap.add_argument("--concurrency", type=int, default=4, help="closed-loop clients (4)")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var", help="model and indexes")
    ap.add_argument("--out", type=Path, default=None, help="output dir (profiles/out/KIND)")
    ap.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra flag for `app serve`, repeatable: --serve-arg=--budget-ms=50",
    )
    return ap
