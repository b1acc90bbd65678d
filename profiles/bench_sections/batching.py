"""bench.py section ``batching``: concurrent cold requests in process, one model call per
text vs cross-request micro-batching, all threads vs one."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from app.config import Config
from profiles.bench_sections.common import Workload
from profiles.loadgen import stats_ms
from rerank.cold import score_cold
from rerank.config import BatchingConfig
from rerank.engine import ScoringEngine
from rerank.text import doc_text


def bench_batching(cfg: Config, wl: Workload, threads: int, clients: int = 8) -> dict[str, Any]:
    """Concurrent cold requests (query + 20 candidates at 128 tokens, no cache), in process:
    one model call per text vs cross-request micro-batching; one instance with every core
    vs one instance per core with one thread each (clients split between them)."""
    variants = {  # name: (batch_tokens, threads per instance, instances)
        "one text per call": (128, threads, 1),
        "micro-batched": (4096, threads, 1),
        "micro-batched, 1 thread": (4096, 1, 1),
        f"micro-batched, {threads} instances x 1 thread": (4096, 1, threads),
    }
    pairs = list(zip(wl.queries, wl.candidates, strict=True))
    out: dict[str, Any] = {"clients": clients, "max_length": 128, "precision": cfg.engine.precision}
    for name, (batch_tokens, n_threads, instances) in variants.items():
        engines = [
            ScoringEngine(
                dataclasses.replace(cfg.engine_config(), max_length=128, threads=n_threads),
                BatchingConfig(batch_tokens=batch_tokens),
            )
            for _ in range(instances)
        ]

        async def run(engines: list[ScoringEngine] = engines) -> tuple[float, list[float], float]:
            lat: list[float] = []

            async def client(i: int) -> None:
                eng = engines[i % len(engines)]
                for j in range(3):
                    q, hits = pairs[(i * 3 + j) % len(pairs)]
                    t0 = time.perf_counter()
                    await score_cold(eng, q, [doc_text(h) for h in hits])
                    lat.append(time.perf_counter() - t0)

            for i in range(len(engines)):  # warm-up
                await client(i)
            lat.clear()
            calls0 = sum(e.batcher.calls for e in engines)
            t0 = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(clients)))
            wall = time.perf_counter() - t0
            calls = sum(e.batcher.calls for e in engines) - calls0
            return wall, lat, calls / max(1, len(lat))

        wall, lat, calls_per_request = asyncio.run(run())
        for eng in engines:
            eng.close()
        out[name] = {
            "requests_per_s": round(len(lat) / wall, 2),
            "latency": stats_ms(lat),
            "model_calls_per_request": round(calls_per_request, 2),
        }
    return out
