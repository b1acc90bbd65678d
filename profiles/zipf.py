"""`make bench` (last step): what the cross-encoder pair-score cache buys on repeated queries.

    .venv/bin/python -m profiles.zipf [--seconds 20] [--concurrency 8] [--rounds 2]

Real traffic repeats its head queries. A Zipf workload (exponent ``--zipf``, 1.1) over
``--queries`` Cranfield queries, each with its own 20 Cranfield documents (the same 20 each
time that query comes back, as a search would retrieve them), goes to ``/v1/rerank`` on a
MiniLM-L6 cross-encoder built here (tools/crossencoder.py, int8, as served), closed loop at
``--concurrency``. Two servers side by side, the pair cache off (``--cache-mb 0``: before)
and on (the default: after), alternated ``--rounds`` times with the same request sequence;
each round starts from a cold cache. Reports requests/s, documents/s, p50/p99 and the
cache's hit rate (from ``/metrics``); writes profiles/out/zipf/zipf.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
from pathlib import Path
from typing import Any

import aiohttp

from profiles.loadgen import clients, nearest_rank, scrape
from profiles.process import free_port, serve
from profiles.workloads import CRANFIELD, cranfield_queries, cranfield_texts

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "out" / "zipf"
CROSS_DIR = ROOT / "var" / "models" / "minilm-cross"
HITS = "rerank_pair_cache_lookups_total"


def cross_encoder(model_dir: Path = CROSS_DIR) -> Path:
    """The MiniLM-L6 cross-encoder, built once from the packaged weights."""
    if not (model_dir / "model.int8.onnx").is_file():
        from tools.crossencoder import build_cross_encoder, packaged_minilm

        build_cross_encoder(packaged_minilm(), model_dir)
    return model_dir


def workload(n_queries: int, n_requests: int, zipf: float, seed: int = 0) -> list[dict[str, Any]]:
    """``n_requests`` rerank bodies: queries drawn by Zipf rank, each with its own docs."""
    queries, texts = cranfield_queries(), cranfield_texts()
    rng = random.Random(seed)
    picked = rng.sample(range(len(queries)), n_queries)
    own = {q: rng.sample(texts, 20) for q in picked}
    weights = [1 / (rank + 1) ** zipf for rank in range(n_queries)]
    draws = rng.choices(picked, weights=weights, k=n_requests)
    return [{"query": queries[q], "documents": own[q]} for q in draws]


async def rerank_load(
    base: str, bodies: list[dict[str, Any]], concurrency: int, seconds: float
) -> dict[str, Any]:
    errors = 0
    async with aiohttp.ClientSession() as s:

        async def send(i: int) -> bool:
            nonlocal errors
            async with s.post(base + "/v1/rerank", json=bodies[i % len(bodies)]) as r:
                await r.read()
                errors += r.status != 200
                return r.status == 200

        lat, wall = await clients(send, concurrency, seconds)
    return {
        "requests": len(lat),
        "errors": errors,
        "req_per_s": len(lat) / wall,
        "docs_per_s": 20 * len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * nearest_rank(lat, 0.99) if lat else None,
    }


async def lookups(base: str) -> tuple[float, float]:
    m = await scrape(base)
    return m.get((HITS, frozenset({("result", "hit")})), 0.0), m.get(
        (HITS, frozenset({("result", "miss")})), 0.0
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not (CRANFIELD / "queries.jsonl").is_file():
        print(f"zipf: skipped, no Cranfield collection at {CRANFIELD}")
        return 0
    model = cross_encoder()
    bodies = workload(args.queries, 100_000, args.zipf)
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--model-dir", str(model), "--max-length", str(args.max_length)]
    common += ["--rerank-max-ms", "60000", "--data-dir", str(ROOT / "var")]
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for rnd in range(args.rounds):
        for label, extra in (("before", ["--cache-mb", "0"]), ("after", [])):
            port = free_port()
            # A fresh server each time: a cold cache.
            with serve([*common, *extra], port, args.out, timeout_s=300):
                base = f"http://127.0.0.1:{port}"
                got = asyncio.run(rerank_load(base, bodies, args.concurrency, args.seconds))
                hits, misses = asyncio.run(lookups(base))
            got["hit_rate"] = hits / (hits + misses) if hits + misses else None
            got["round"] = rnd
            results[label].append(got)
            print(label, json.dumps(got))
    report = {"args": vars(args) | {"out": str(args.out)}, "results": results}
    (args.out / "zipf.json").write_text(json.dumps(report, indent=2))
    print("| cache | req/s | docs/s | p50 ms | p99 ms | hit rate |\n|---|---|---|---|---|---|")
    for label, runs in results.items():
        med = {k: statistics.median(r[k] or 0 for r in runs) for k in runs[0] if k != "round"}
        print(
            f"| {label} | {med['req_per_s']:.1f} | {med['docs_per_s']:.0f} | "
            f"{med['p50_ms']:.0f} | {med['p99_ms']:.0f} | {med['hit_rate']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
