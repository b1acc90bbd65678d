"""Benchmark harness: every figure below is measured in this run, side by side.

    .venv/bin/python -m profiles.bench [--quick] [--sections stage,peers,floor,ops,http,...]

Sections
- stage:   ranking stage (tokenize + infer + fuse) for one query + 20 candidates, cold (no
           cache) and warm (cached document vectors), fp32 and int8, at max lengths
           64/128/256 — our engine vs a plain default ``onnxruntime.InferenceSession`` on the
           same unfused export;
- peers:   sentence-transformers ``CrossEncoder`` and ``SentenceTransformer`` (torch CPU) on
           the same pairs, same threads (needs the optional ``bench`` extra + torch);
- floor:   the model's FLOPs for the workload over this machine's measured GEMM rates
           (numpy fp32; ONNX Runtime u8 x s8 MatMulInteger for int8);
- ops:     the cold int8 call at 128 tokens under ONNX Runtime's profiler: ms per call and
           share of the model run per op type, the time around the model run, and the
           result against the goal (>= 4x the CrossEncoder) with the figures above
           (profiles/ops_profile.py);
- batching: concurrent cold requests in process: one model call per text vs cross-request
           micro-batching, all threads vs one;
- http:    ``/v1/search`` on the embedded backend, with index-time vectors and cold (no
           vectors, no cache): p50 at concurrency 1, then open-loop p50/p95/p99, errors and
           scored fraction at a sweep of arrival rates, the highest rate with p99 <= 20 ms,
           and a PNG;
- overlap: ES stand-in delaying ``_msearch``: total vs max(ES, scoring) and vs their sum,
           and sequential single queries vs dedup + N concurrent chunks for 50 sub-queries.

Workload: Cranfield from ../shared/datasets/cranfield (skips with a message if absent).
Writes profiles/out/bench/bench.json (+ latency_vs_load.png) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from app.config import from_sources
from profiles.bench_sections.batching import bench_batching
from profiles.bench_sections.common import DATASET, OUT, load_workload
from profiles.bench_sections.floor import bench_floor
from profiles.bench_sections.http_load import bench_http, plot_http
from profiles.bench_sections.overlap import bench_overlap
from profiles.bench_sections.report import print_report
from profiles.bench_sections.stage import bench_stage
from profiles.bench_sections.torch_peers import bench_peers
from profiles.loadgen import machine
from profiles.ops_profile import bench_ops
from rerank.text import doc_text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer queries and shorter load runs")
    ap.add_argument("--sections", default="stage,peers,floor,ops,batching,http,overlap")
    ap.add_argument("--rates", default="10,50,100,200,300,400")
    args = ap.parse_args()
    if not (DATASET / "corpus.jsonl").is_file():
        print(f"Cranfield not found at {DATASET} (../shared absent): nothing to benchmark")
        return 0
    sections = set(args.sections.split(","))
    cfg = from_sources(None)
    threads = cfg.engine.threads or len(os.sched_getaffinity(0))
    OUT.mkdir(parents=True, exist_ok=True)
    n_queries, repeats, seconds = (10, 1, 5.0) if args.quick else (30, 2, 15.0)
    wl = load_workload(n_queries, OUT / "index")
    texts = [
        (q, [doc_text(h) for h in hits]) for q, hits in zip(wl.queries, wl.candidates, strict=True)
    ]
    report: dict[str, Any] = {
        "machine": machine(vnni=True),
        "threads": threads,
        "queries": n_queries,
        "command": " ".join(["python -m profiles.bench", *sys.argv[1:]]),
    }
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("stage", lambda: bench_stage(cfg, wl, repeats)),
        ("peers", lambda: bench_peers(cfg, wl, threads)),
        ("floor", lambda: bench_floor(cfg, wl, report.get("stage", {}), threads)),
        (
            "ops",
            lambda: bench_ops(
                cfg.engine_config(), threads, texts[:5], OUT / "ops", report, 2 * repeats
            ),
        ),
        ("batching", lambda: bench_batching(cfg, wl, threads)),
        (
            "http",
            lambda: bench_http(cfg, wl, [float(r) for r in args.rates.split(",")], seconds, OUT),
        ),
        ("overlap", lambda: bench_overlap(cfg, wl)),
    ]
    for name, fn in steps:
        if name in sections:
            print(f"... {name}", flush=True)
            report[name] = fn()
    m = report["machine"]
    print(f"# machine: {m['cpu']}, {m['cores']} cores, {threads} threads, VNNI {m['avx512_vnni']}")
    print_report(report)
    if "http" in report:
        plot_http(report["http"], OUT / "latency_vs_load.png")
    (OUT / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {OUT / 'bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
