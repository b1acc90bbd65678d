"""bench.py section ``http``: ``/v1/search`` on the embedded backend, with index-time vectors
and cold: concurrency 1, then open loop at a sweep of rates; and the PNG."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.config import Config
from profiles.bench_sections.common import DATASET, ROOT, Workload
from profiles.loadgen import clients, paced, stats_ms
from profiles.process import free_port, running


async def rate_run(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Requests leave at fixed intervals whatever the server does (open loop), so queueing
    shows up as latency instead of silently lowering the offered load."""
    import aiohttp

    lat: list[float] = []
    scored: list[float] = []
    codes: dict[str, int] = {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int, due: float) -> None:
            t0 = time.perf_counter()
            try:
                async with session.post(
                    url, data=bodies[i % len(bodies)], timeout=aiohttp.ClientTimeout(total=10)
                ) as r:
                    body = await r.read()
                    codes[str(r.status)] = codes.get(str(r.status), 0) + 1
                    if r.status == 200:
                        lat.append(time.perf_counter() - t0)
                        doc = json.loads(body)
                        scored.append(doc["scored"] / max(1, doc["candidates"]))
            except (aiohttp.ClientError, TimeoutError) as exc:
                codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1

        sent = len(await paced(one, rate, seconds))
    errors = sum(v for k, v in codes.items() if k != "200")
    return {
        "rate": rate,
        "sent": sent,
        "codes": codes,
        "errors": errors,
        "scored_fraction": round(statistics.mean(scored), 3) if scored else None,
        **(stats_ms(lat) if lat else {"median": None, "p95": None, "p99": None}),
    }


async def one_by_one(url: str, bodies: list[bytes], n: int) -> dict[str, Any]:
    """Concurrency 1: one request after another (the latency a lone user sees)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def send(i: int) -> bool:
            async with session.post(url, data=bodies[i % len(bodies)]) as r:
                await r.read()
                return r.status == 200

        lat, _ = await clients(send, 1, requests=n)
    return stats_ms(lat)


HTTP_MODES = {
    # Index-time vectors (the default `make serve` set-up): a search encodes only the query.
    "vectors": {"RERANK_CACHE_MB": "256"},
    # No stored vectors, no cache: every candidate through the model, the budget cuts.
    "cold": {"RERANK_CACHE_MB": "0"},
}


def build_vector_index(cfg: Config, path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "app", "index", "--dataset", str(DATASET)],
        cwd=ROOT,
        env={
            **os.environ,
            "RERANK_INDEX_DIR": str(path),
            "RERANK_MODEL_DIR": str(cfg.resolved_model_dir),
        },
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_http(
    cfg: Config, wl: Workload, rates: Sequence[float], seconds: float, out: Path
) -> dict[str, Any]:
    build_vector_index(cfg, out / "index-vectors")
    indexes = {"vectors": out / "index-vectors", "cold": out / "index"}
    bodies = [json.dumps({"query": q}).encode() for q in wl.queries]
    result: dict[str, Any] = {"budget_ms": cfg.request.budget_ms, "seconds_per_rate": seconds}
    for mode, extra in HTTP_MODES.items():
        port = free_port()
        env = {
            **extra,
            "RERANK_INDEX_DIR": str(indexes[mode]),
            "RERANK_PORT": str(port),
            "RERANK_MODEL_DIR": str(cfg.resolved_model_dir),
            "RERANK_LOG_LEVEL": "WARNING",
        }
        cmd = [sys.executable, "-m", "app", "serve"]
        with running(cmd, port, out / f"server-{mode}.log", env=env):
            url = f"http://127.0.0.1:{port}/v1/search"
            asyncio.run(one_by_one(url, bodies, 20))  # warm-up
            c1 = asyncio.run(one_by_one(url, bodies, 200))
            runs = [asyncio.run(rate_run(url, bodies, r, seconds)) for r in rates]
        ok = [
            r["rate"] for r in runs if r["p99"] is not None and r["p99"] <= 20 and not r["errors"]
        ]
        result[mode] = {
            "concurrency_1": c1,
            "runs": runs,
            "max_rate_p99_le_20ms": max(ok) if ok else None,
        }
    return result


def plot_http(http: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in (("vectors", "o-"), ("cold", "s--")):
        runs = [r for r in http.get(mode, {}).get("runs", []) if r["p99"] is not None]
        for key in ("median", "p99"):
            xs, ys = [r["rate"] for r in runs], [r[key] for r in runs]
            ax.plot(xs, ys, style, label=f"{mode} {key}")
    ax.axhline(20, color="red", ls="--", lw=1, label="20 ms budget")
    ax.set_xlabel("offered load, requests/s (open loop)")
    ax.set_ylabel("latency of 200s, ms")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("/v1/search latency vs load (embedded backend, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
