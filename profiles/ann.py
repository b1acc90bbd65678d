"""Approximate kNN for large embedded indexes, measured (issue #25): recall@20 against
exact, single-thread search latency over an ``ef`` sweep, build time and size, for the
HNSW indexes of faiss-cpu, hnswlib and usearch, on ~100,000 real embeddings
(``profiles/ann_corpus.py``) and Cranfield's 225 queries; and exact numpy kNN by corpus
size (where exact stops being cheap: the threshold).

    python -m profiles.ann [--n 100000] [--specs faiss-M32,hnswlib-M16] [--data-dir var]

Prints the tables and writes ``profiles/out/ann.json``. Every library runs on one thread
(``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` = 1, and each library's own thread argument),
as the service runs it. A library that is not installed is skipped (faiss-cpu is the
service's; hnswlib and usearch: ``pip install hnswlib usearch``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from profiles.ann_corpus import OUT

K = 20
EFS = (32, 64, 128, 256)
EF_CONSTRUCTION = 128
SIZES = (1_400, 10_000, 20_000, 50_000, 100_000)
Search = Callable[[np.ndarray, int, int], np.ndarray]  # (query, k, ef) -> row ids


def _faiss(data: np.ndarray, m: int, fp16: bool) -> tuple[Search, int]:
    import faiss

    faiss.omp_set_num_threads(1)
    dim, ip = data.shape[1], faiss.METRIC_INNER_PRODUCT
    index: faiss.IndexHNSW
    if fp16:
        fp16_ = faiss.ScalarQuantizer.QT_fp16
        index = faiss.IndexHNSWSQ(dim, fp16_, m, ip)  # type: ignore[arg-type]  # stub: enum
        index.train(data)
    else:
        index = faiss.IndexHNSWFlat(dim, m, ip)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(data)

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.hnsw.efSearch = max(ef, k)
        return index.search(q[None], k)[1][0]

    return search, len(faiss.serialize_index(index))


def _hnswlib(data: np.ndarray, m: int, fp16: bool) -> tuple[Search, int]:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=data.shape[1])
    index.init_index(len(data), ef_construction=EF_CONSTRUCTION, M=m, random_seed=100)
    index.set_num_threads(1)
    index.add_items(data, np.arange(len(data)), num_threads=1)

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.set_ef(max(ef, k))
        return index.knn_query(q, k=k, num_threads=1)[0][0]

    with tempfile.TemporaryDirectory() as tmp:
        index.save_index(f"{tmp}/i")
        size = os.path.getsize(f"{tmp}/i")
    return search, size


def _usearch(data: np.ndarray, m: int, fp16: bool) -> tuple[Search, int]:
    from usearch.index import Index

    index = Index(
        ndim=data.shape[1],
        metric="ip",
        dtype="f16" if fp16 else "f32",
        connectivity=m,
        expansion_add=EF_CONSTRUCTION,
    )
    index.add(np.arange(len(data)), data, threads=1)

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.expansion_search = ef
        return np.asarray(index.search(q, k, threads=1).keys)

    return search, int(index.serialized_length)


LIBS: dict[str, Callable[[np.ndarray, int, bool], tuple[Search, int]]] = {
    "faiss": _faiss,
    "hnswlib": _hnswlib,
    "usearch": _usearch,
}
SPECS = (
    "faiss-M16",
    "faiss-M32",
    "faiss-f16-M32",
    "hnswlib-M16",
    "hnswlib-M32",
    "usearch-M16",
    "usearch-M32",
    "usearch-f16-M32",
)


def _parse(spec: str) -> tuple[str, int, bool]:
    parts = spec.split("-")
    return parts[0], int(parts[-1].lstrip("M")), "f16" in parts


def exact_top(data: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """What ``VectorTable.nearest`` does: one product, a partial sort."""
    sims = data @ q
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top], kind="stable")]


def _times(fn: Callable[[np.ndarray], object], queries: np.ndarray, passes: int) -> list[float]:
    for q in queries[:20]:  # warm caches and lazy allocations
        fn(q)
    out = []
    for _ in range(passes):
        for q in queries:
            t0 = time.perf_counter_ns()
            fn(q)
            out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def _pcts(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99))}


def exact_by_size(data: np.ndarray, queries: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for n in (s for s in SIZES if s <= len(data)):
        part = np.ascontiguousarray(data[:n])
        passes = 3 if n <= 20_000 else 1

        def top(q: np.ndarray, p: np.ndarray = part) -> np.ndarray:
            return exact_top(p, q, K)

        rows.append({"n": n, **_pcts(_times(top, queries, passes))})
        print(f"exact n={n}: {rows[-1]}", flush=True)
    return rows


def measure(spec: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    lib, m, fp16 = _parse(spec)
    threads_before = threading.active_count(), len(os.listdir("/proc/self/task"))
    t0 = time.perf_counter()
    search, size = LIBS[lib](data, m, fp16)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"spec": spec, "build_s": build_s, "size_mb": size / 2**20, "efs": []}
    for ef in EFS:

        def at_ef(q: np.ndarray, e: int = ef) -> np.ndarray:
            return search(q, K, e)

        hits = zip([at_ef(q) for q in queries], truth, strict=True)
        recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in hits]))
        row = {"ef": ef, "recall": recall, **_pcts(_times(at_ef, queries, 3))}
        out["efs"].append(row)
        print(f"{spec} ef={ef}: {row}", flush=True)
    out["os_threads_added"] = len(os.listdir("/proc/self/task")) - threads_before[1]
    return out


def render(exact: list[dict[str, Any]], results: list[dict[str, Any]], n: int) -> str:
    lines = [f"exact numpy kNN (top {K}), one thread:", "| vectors | median ms | p99 ms |"]
    lines += ["|---|---|---|"]
    lines += [f"| {r['n']:,} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} |" for r in exact]
    lines += [
        "",
        f"HNSW at {n:,} vectors, efConstruction {EF_CONSTRUCTION}, recall@{K} against exact:",
        "| index | build s | size MB | ef | recall@20 | median ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for e in r["efs"]:
            lines.append(
                f"| {r['spec']} | {r['build_s']:.0f} | {r['size_mb']:.0f} | {e['ef']} | "
                f"{e['recall']:.3f} | {e['median_ms']:.3f} | {e['p99_ms']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    about = (__doc__ or "").split("\n\n")[0]
    ap = argparse.ArgumentParser(prog="python -m profiles.ann", description=about)
    ap.add_argument("--n", type=int, default=100_000, help="vectors (texts embedded)")
    ap.add_argument("--specs", default=",".join(SPECS), help="indexes to build, comma-separated")
    ap.add_argument("--data-dir", type=Path, default=Path("var"), help="where the model is")
    args = ap.parse_args(argv)
    from app.config import Config
    from profiles.ann_corpus import vectors
    from profiles.loadgen import machine

    cfg = Config().override(data_dir=args.data_dir)
    data, queries = vectors(cfg, args.n)
    truth = np.stack([exact_top(data, q, K) for q in queries])
    exact = exact_by_size(data, queries)
    results = []
    for spec in filter(None, args.specs.split(",")):
        try:
            results.append(measure(spec, data, queries, truth))
        except ImportError as exc:
            print(f"{spec}: skipped ({exc})", flush=True)
    print(render(exact, results, len(data)))
    OUT.mkdir(exist_ok=True)
    report = {"n": len(data), "k": K, "machine": machine(), "exact": exact, "ann": results}
    (OUT / "ann.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    # Read when numpy and each library's OpenMP load: one thread, as the service runs.
    if os.environ.get("OMP_NUM_THREADS") != "1" or os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        os.execv(sys.executable, [sys.executable, "-m", "profiles.ann", *sys.argv[1:]])
    sys.exit(main())
