"""bench.py's tables: every section's figures, side by side."""

from __future__ import annotations

from typing import Any

from profiles.bench_sections.common import table
from profiles.bench_sections.http_load import HTTP_MODES


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
