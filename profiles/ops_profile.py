"""The ``ops`` section of profiles/bench.py: where the cold ranking call's time goes.

The cold call at 128 tokens (one query + 20 Cranfield candidates, no cache, no deadline) is
run through the engine's own path, ``ScoringEngine.score`` (batcher, executor, ``_call``:
tokenise, sort by length, pad per length group, one model run per group), on an engine
built as the ``stage`` section builds it. Only its ONNX Runtime sessions are swapped for
profiled twins: the same int8 file, the same options (``rerank.model.session_options``),
plus ORT's profiler; the pool session and, when the engine has one, the one-thread session
for small calls (the query's group goes there). This is the least invasive faithful choice:
nothing is re-implemented, so what is profiled is what the ``stage`` column times
(less its score fusion).

ORT's profiler cannot skip warm-up runs, so the warm-up calls are profiled too; each
session counts its runs, and :func:`aggregate` keeps the node events inside the span of the
measured (last) runs only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.model import model_file, session_options

LENGTH = 128
# Op types whose kernel is a u8 x s8 GEMM. Each also does some work besides: a
# DynamicQuantizeMatMul quantises its input first; a QAttention runs its QKV projection as
# an int8 GEMM and then softmax(QK^T)V in fp32. Their time is an upper bound on GEMM time.
INT8_GEMM_OPS = frozenset(
    {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention"}
)


class _Profiled(ort.InferenceSession):
    """A session that counts its runs: which of the profile's runs were the measured ones."""

    runs = 0

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        self.runs += 1
        return super().run(output_names, input_feed, run_options)


def _profiled(path: Path, threads: int, spinning: bool, prefix: Path) -> _Profiled:
    opts = session_options(threads, spinning)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    return _Profiled(str(path), opts, providers=["CPUExecutionProvider"])


# --- pure aggregation -------------------------------------------------------------------
def aggregate(events: Sequence[dict[str, Any]], last_runs: int) -> dict[str, Any]:
    """Kernel time per op type over the last ``last_runs`` ``model_run`` events of one ORT
    profile (JSON list of trace events): node events (``cat == "Node"``, names ending in
    ``_kernel_time``) inside the span of those runs, summed by ``args.op_name``."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    if not 0 < last_runs <= len(runs):
        raise ValueError(f"asked for the last {last_runs} runs of a profile with {len(runs)}")
    kept = runs[-last_runs:]
    start, end = kept[0]["ts"], max(e["ts"] + e["dur"] for e in kept)
    ops: dict[str, dict[str, int]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e["ts"] < start or e["ts"] + e["dur"] > end:
            continue
        op = ops.setdefault(e["args"]["op_name"], {"us": 0, "count": 0})
        op["us"] += e["dur"]
        op["count"] += 1
    return {"runs": last_runs, "model_run_us": sum(e["dur"] for e in kept), "ops": ops}


def per_call(profiles: Sequence[dict[str, Any]], calls: int) -> dict[str, Any]:
    """:func:`aggregate` results of the sessions of one set of calls, merged and divided by
    the number of calls: ms per call and share of the model runs, per op type, biggest first;
    and what the model runs spent outside any kernel (unattributed)."""
    merged: dict[str, dict[str, int]] = {}
    for p in profiles:
        for name, op in p["ops"].items():
            m = merged.setdefault(name, {"us": 0, "count": 0})
            m["us"] += op["us"]
            m["count"] += op["count"]
    run_ms = sum(p["model_run_us"] for p in profiles) / calls / 1000
    rows = [
        {
            "op": name,
            "ms_per_call": round(op["us"] / calls / 1000, 3),
            "share": round(op["us"] / calls / 1000 / run_ms, 4) if run_ms else 0.0,
            "count_per_call": round(op["count"] / calls, 2),
        }
        for name, op in sorted(merged.items(), key=lambda kv: -kv[1]["us"])
    ]
    kernels = sum(op["us"] for op in merged.values()) / calls / 1000
    return {
        "calls": calls,
        "runs_per_call": round(sum(p["runs"] for p in profiles) / calls, 2),
        "model_run_ms": round(run_ms, 3),
        "kernel_ms": round(kernels, 3),
        "unattributed_ms": round(run_ms - kernels, 3),
        "ops": rows,
    }


# --- the section ------------------------------------------------------------------------
def bench_ops(
    engine_config: EngineConfig,
    threads: int,
    pairs: Sequence[tuple[str, list[str]]],
    out: Path,
    report: dict[str, Any],
    repeats: int,
) -> dict[str, Any]:
    """Profile ``repeats`` cold calls per (query, candidate texts) pair after one warm-up
    pass; ``threads``: the pool's intra-op threads as the engine resolves them."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    cfg = EngineConfig(
        model_dir=engine_config.model_dir,
        max_length=LENGTH,
        threads=engine_config.threads,
        precision="int8",
    )
    eng = ScoringEngine(cfg)
    model = eng.model
    served = model.session.get_session_options()
    assert served.intra_op_num_threads == threads, (served.intra_op_num_threads, threads)
    path = model_file(eng.model_dir, "int8")
    sessions = [_profiled(path, threads, cfg.spinning, out / "pool")]
    model.session = sessions[0]
    if model._small is not None:  # the engine's one-thread session for small calls
        sessions.append(_profiled(path, 1, False, out / "small"))
        model._small = sessions[-1]

    async def cold(q: str, docs: list[str]) -> dict[str, float]:
        calls = eng.batcher.calls
        t0 = time.perf_counter()
        got = await score_cold(eng, q, docs)
        wall = time.perf_counter() - t0
        t = got.times
        return {
            "wall": wall,
            "tokenize": t.tokenize,
            "infer": t.infer,
            "calls": eng.batcher.calls - calls,
        }

    async def run() -> tuple[list[int], list[dict[str, float]]]:
        for q, docs in pairs:  # warm-up: in the profile, left out by the run counts
            await cold(q, docs)
        before = [s.runs for s in sessions]
        timed = [await cold(q, docs) for _ in range(repeats) for q, docs in pairs]
        return before, timed

    before, timed = asyncio.run(run())
    eng.close()
    files = [Path(s.end_profiling()) for s in sessions]
    profiles = [
        aggregate(json.loads(f.read_text()), s.runs - b)
        for f, s, b in zip(files, sessions, before, strict=True)
    ]
    n = len(timed)
    res = per_call(profiles, n)
    res["sessions"] = [
        {
            "name": f.name.split("_")[0],
            "runs_per_call": round(p["runs"] / n, 2),
            "model_run_ms": round(p["model_run_us"] / n / 1000, 3),
        }
        for f, p in zip(files, profiles, strict=True)
    ]

    def mean_ms(key: str) -> float:
        return round(statistics.fmean(t[key] for t in timed) * 1000, 3)

    wall, tok, infer = mean_ms("wall"), mean_ms("tokenize"), mean_ms("infer")
    res["call"] = {
        "wall_median_ms": round(statistics.median(t["wall"] for t in timed) * 1000, 3),
        "wall_mean_ms": wall,
        "tokenize_pad_ms": tok,
        "session_run_ms": infer,
        "binding_ms": round(infer - res["model_run_ms"], 3),
        "outside_model_call_ms": round(wall - tok - infer, 3),
        "model_calls_per_score": statistics.fmean(t["calls"] for t in timed),
    }
    res.update(
        max_length=LENGTH,
        precision="int8",
        threads=threads,
        kind=eng.kind.value,
        small_session=len(sessions) > 1,
        queries=len(pairs),
        int8_gemm_ops=sorted(INT8_GEMM_OPS),
        profiles=[str(f) for f in files],
    )
    res["goal"] = goal(res, report)
    return res


def goal(ops: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The profile against the goal: cold scoring at 128 tokens >= 4x faster than
    sentence-transformers' CrossEncoder, both measured in this run. What is not int8 GEMM
    comes from the profiled calls themselves (the ``stage`` median is another measurement,
    and on a shared machine it may sit far from them)."""
    key = str(LENGTH)
    peers = report.get("peers", {})
    if "skipped" in peers or key not in peers:
        return {"skipped": f"peers did not run ({peers.get('skipped', 'not in --sections')})"}
    ce = peers[key]["cross_encoder"]["median"]
    target = ce / 4
    stage = report.get("stage", {}).get(key, {}).get("int8")
    engine = stage["cold"]["median"] if stage else None
    gemm_ops = [r for r in ops["ops"] if r["op"] in INT8_GEMM_OPS]
    gemm = sum(r["ms_per_call"] for r in gemm_ops)
    # Everything else in the same calls: other ops, ORT between kernels, tokenising,
    # the binding, the batcher and executor hop.
    rest = ops["call"]["wall_mean_ms"] - gemm
    return {
        "cross_encoder_median_ms": ce,
        "target_ms": round(target, 3),
        "engine_int8_cold_median_ms": engine,
        "engine_over_target": round(engine / target, 2) if engine else None,
        "profiled_call_median_ms": ops["call"]["wall_median_ms"],
        "int8_gemm_ops_counted": [r["op"] for r in gemm_ops],
        "int8_gemm_ms": round(gemm, 3),
        "int8_gemm_share_of_run": round(gemm / ops["model_run_ms"], 4),
        "int8_floor_ms": report.get("floor", {}).get(key, {}).get("int8_floor_ms"),
        "non_gemm_ms": round(rest, 3),
        "gemm_budget_ms": round(target - rest, 3),  # what the GEMMs may take, the rest as is
    }


def ops_table(ops: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]]:
    """Title, header and rows for bench.py's ``table``."""
    rows: list[list[Any]] = [
        [r["op"], r["ms_per_call"], f"{r['share']:.1%}", r["count_per_call"]] for r in ops["ops"]
    ]
    run = ops["model_run_ms"]
    rows.append(
        ["(unattributed)", ops["unattributed_ms"], f"{ops['unattributed_ms'] / run:.1%}", "-"]
    )
    rows.append(["= model_run", run, "100.0%", ops["runs_per_call"]])
    title = (
        f"ops: cold call, {ops['max_length']} tokens, int8, {ops['threads']} threads, "
        f"{ops['calls']} calls ({ops['queries']} queries), ORT profile per op type"
    )
    return title, ["op type", "ms per call", "share of run", "count per call"], rows


def ops_lines(ops: dict[str, Any]) -> list[str]:
    """The call around the model runs, then the goal line."""
    c = ops["call"]
    lines = [
        f"cold call (mean): {c['wall_mean_ms']} ms = tokenise+pad {c['tokenize_pad_ms']} "
        f"+ session.run {c['session_run_ms']} (model_run {ops['model_run_ms']}, binding "
        f"{c['binding_ms']}) + outside the model call {c['outside_model_call_ms']} (batcher, "
        f"executor hop, scoring); p50 {c['wall_median_ms']} ms, "
        f"{c['model_calls_per_score']:g} model call(s) per score; model_run by session: "
        + ", ".join(
            f"{x['name']} {x['model_run_ms']} ms in {x['runs_per_call']:g} runs"
            for x in ops["sessions"]
        )
    ]
    g = ops["goal"]
    if "skipped" in g:
        return [*lines, f"goal line skipped: {g['skipped']}"]
    floor, budget, gemm = g["int8_floor_ms"], g["gemm_budget_ms"], g["int8_gemm_ms"]
    if budget <= 0:
        verdict = f"everything but the GEMMs ({g['non_gemm_ms']:.1f} ms) is over the target alone"
    elif floor is not None and budget < floor:
        verdict = (
            f"with the rest ({g['non_gemm_ms']:.1f} ms) as is, the GEMMs would have to fit "
            f"{budget:.1f} ms, under their floor"
        )
    else:
        verdict = (
            f"with the rest ({g['non_gemm_ms']:.1f} ms) as is, the GEMMs would have to fit "
            f"{budget:.1f} ms ({gemm / budget:.1f}x faster)"
        )
    engine = g["engine_int8_cold_median_ms"]
    stage = (
        f"engine int8 cold p50 {engine:.1f} ms ({g['engine_over_target']}x the target), "
        if engine
        else "engine int8 cold: stage not run, "
    )
    lines.append(
        f"goal (cold, {ops['max_length']} tokens, >= 4x CrossEncoder): CrossEncoder p50 "
        f"{g['cross_encoder_median_ms']:.1f} ms -> target {g['target_ms']:.1f} ms; {stage}"
        f"profiled call p50 {g['profiled_call_median_ms']:.1f} ms; int8 GEMMs "
        f"({' + '.join(g['int8_gemm_ops_counted'])}) {gemm:.1f} ms/call = "
        f"{g['int8_gemm_share_of_run']:.1%} of the model run, int8 floor {floor} ms; {verdict}"
    )
    return lines
