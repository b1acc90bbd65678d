"""`make bench`'s tables (profiles/load.py): latency, scored fraction and CPU per step, CPU by
thread, the slowest answers' stages, warm starts."""

from __future__ import annotations

from typing import Any

from profiles import thread_profile


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n# {m['cpu']}, {m['cores']} cores, load average before {m['loadavg_before']:.2f}")
    print(
        f"/v1/search, unique queries, budget {report['budget_ms']:g} ms, open loop "
        f"{report['seconds_per_rate']:g} s per rate x {report['rounds']} round(s)\n"
    )
    print(
        "| variant | offered load | p50 ms | p99 ms | errors | candidates model-scored "
        "| model calls / request | texts / call | server CPU ms / request "
        "| load generator CPU ms / request |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, v in report["variants"].items():
        c1 = v["concurrency_1"]
        print(
            f"| {label} | concurrency 1 | {c1['p50']} | {c1['p99']} | {c1['errors']} | "
            f"{_frac(c1['scored_fraction'])} | {c1['model_calls_per_request']} | "
            f"{c1['texts_per_call']} | {c1['server_cpu_ms_per_request']} | "
            f"{c1['client_cpu_ms_per_request']} |"
        )
        for r in v["runs"]:
            print(
                f"| {label} | {r['rate']:g} req/s | {r['p50']} | {r['p99']} | {r['errors']} | "
                f"{_frac(r['scored_fraction'])} | {r['model_calls_per_request']} | "
                f"{r['texts_per_call']} | {r['server_cpu_ms_per_request']} | "
                f"{r['client_cpu_ms_per_request']} |"
            )
    print_threads(report)
    if "profile" in report:
        print("\n".join(thread_profile.lines(report["profile"])))
    print()
    for label, v in report["variants"].items():
        best = v["max_rate_p99_le_20ms_scored_ge_95"]
        print(f"highest rate with p99 <= 20 ms at >= 95% scored ({label}): {best}")
    if any(v["warm_starts"] for v in report["variants"].values()):
        print(
            "\n| variant | start | neighbour burning a core | ready s | first call | "
            "first rerank scored | ms | first search scored | ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for label, v in report["variants"].items():
            for w in v["warm_starts"]:
                r, s = w["rerank"], w["search"]
                print(
                    f"| {label} | {w['start']} | {'yes' if w['burn'] else 'no'} | {w['ready_s']} "
                    f"| {'rerank' if w['rerank_first'] else 'search'} | {r['scored']}/{r['of']} "
                    f"| {r['ms']} | {s['scored']}/{s['of']} | {s['ms']} |"
                )


def print_threads(report: dict[str, Any]) -> None:
    """Which thread each step's CPU went to, and where the slowest answers waited."""
    ref = report.get("host_reference_ms") or []
    if ref:
        print(
            "\nhost reference before each round (one fixed 8-token query, one thread, median): "
            + ", ".join(f"{x} ms" for x in ref)
        )
    rows = [
        (label, name, r)
        for label, v in report["variants"].items()
        for name, r in [("concurrency 1", v["concurrency_1"])]
        + [(f"{r['rate']:g} req/s", r) for r in v["runs"]]
    ]
    groups = sorted(
        {
            g
            for _, _, r in rows
            for g, ms in (r.get("thread_cpu_ms_per_request") or {}).items()
            if ms >= 0.01  # idle helper threads (uvloop's resolver) only clutter the table
        }
    )
    if groups:
        print("\nserver CPU ms per request by thread, and the time its threads waited for a core")
        print(f"| variant | offered load | {' | '.join(groups)} | run-queue wait |")
        print("|---|---|" + "---|" * (len(groups) + 1))
        for label, name, r in rows:
            cpu = r["thread_cpu_ms_per_request"]
            cells = " | ".join(str(cpu.get(g, "-")) for g in groups)
            print(f"| {label} | {name} | {cells} | {r['runqueue_wait_ms_per_request']} |")
    slow = [(label, name, r["slowest_1pct"]) for label, name, r in rows if r.get("slowest_1pct")]
    if slow:
        stages = sorted({k for *_, s in slow for k in s} - {"requests", "latency_ms", "total"})
        print("\nthe slowest 1% of answers: median ms per stage; outside = client latency - total")
        print(f"| variant | offered load | answers | latency | total | {' | '.join(stages)} |")
        print("|---|---|---|---|---|" + "---|" * len(stages))
        for label, name, s in slow:
            cells = " | ".join(str(s.get(k, "-")) for k in stages)
            print(
                f"| {label} | {name} | {s['requests']} | {s['latency_ms']} | "
                f"{s.get('total', '-')} | {cells} |"
            )


def _frac(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
