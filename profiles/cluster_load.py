"""`make bench` section "cluster": `/v1/search` in front of a cluster answering in 10, 30
and 100 ms (issue 22).

    .venv/bin/python -m profiles.cluster_load [--latencies 10,30,100] [--rate 100]
        [--seconds 10] [--c1 100] [--rounds 1] [--variant LABEL=ROOT ...]

No Elasticsearch runs on these machines, so the stand-in (``profiles/standin_serve.py``) plays
the cluster: every ``_msearch`` answered after the set delay. The default corpus is indexed
into it by each variant's own ``app index`` (index-time vectors, tagged as that variant
tags them), each variant serves with its defaults (no ``budget_ms`` sent: the service
default applies), and every query text is unique. Per latency and variant: concurrency 1,
then an open loop at ``--rate``: errors, the fraction of candidates model-scored, latency,
and the ranking time, what the answer added once retrieval had answered (the body's
``timings.ranking``; for a variant without it, ``total - retrieve``). The goal: 0 errors,
>= 95% scored, ranking p99 <= 20 ms at both. Variants alternate step by step (``--rounds``)
on one stand-in: side by side, in one run. Prints a table, writes
profiles/out/cluster/cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from profiles.load import start
from profiles.load_steps import Step, at_rate, measured, sequential
from profiles.loadgen import machine, pct_ms
from profiles.process import free_port, stop, wait_ready
from profiles.workloads import unique_queries

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "out" / "cluster"
GOAL_RANKING_MS, GOAL_SCORED = 20.0, 0.95


def ranking_ms(step: Step) -> list[float]:
    """Each answer's ranking time in ms: ``timings.ranking``, else ``total - retrieve``."""
    out = []
    for _, t in step.timed:
        out.append(t["ranking"] if "ranking" in t else t.get("total", 0.0) - t.get("retrieve", 0.0))
    return out


def summary(step: Step) -> dict[str, Any]:
    s = step.summary()
    ranking = [v / 1000 for v in ranking_ms(step)]  # pct_ms() takes seconds
    s["ranking_p50"], s["ranking_p99"] = pct_ms(ranking, 0.5), pct_ms(ranking, 0.99)
    s["goal_met"] = (
        not s["errors"]
        and (s["scored_fraction"] or 0) >= GOAL_SCORED
        and s["ranking_p99"] is not None
        and s["ranking_p99"] <= GOAL_RANKING_MS
    )
    return {k: s[k] for k in RESULT_KEYS}


RESULT_KEYS = (
    "sent",
    "errors",
    "error_kinds",
    "scored_fraction",
    "p50",
    "p99",
    "ranking_p50",
    "ranking_p99",
    "server_cpu_ms_per_request",
    "goal_met",
)


def index_into(root: Path, es_url: str, index: str, data_dir: Path, log: Path) -> None:
    """The default corpus into the stand-in, by the variant's own ``app index``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "app", "index", "--es-url", es_url, "--es-index", index]
    cmd += ["--dataset", str(data_dir / "corpus" / "stdlib"), "--data-dir", str(data_dir)]
    with log.open("ab") as f:
        subprocess.run(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def set_delay(es_url: str, ms: float) -> None:
    req = urllib.request.Request(f"{es_url}/_standin/delay?ms={ms}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latencies", default="10,30,100", help="stand-in _msearch delays, ms")
    ap.add_argument("--rate", type=float, default=100.0, help="open-loop req/s (100)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per latency and round (10)")
    ap.add_argument("--c1", type=int, default=100, help="sequential requests (100)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var")
    ap.add_argument("--variant", action="append", default=[], help="LABEL=ROOT, repeatable")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir.resolve()
    variants = dict(v.split("=", 1) for v in args.variant) or {"this": str(ROOT)}
    latencies = [float(x) for x in args.latencies.split(",") if x]
    per = args.c1 + int(args.rate * args.seconds) + 20
    queries = unique_queries(
        data_dir / "corpus" / "stdlib" / "corpus.jsonl",
        per * len(latencies) * len(variants) * args.rounds + 100,
    )
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m profiles.cluster_load", *sys.argv[1:]]),
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "results": {},
    }
    t_run = time.monotonic()
    es_port = free_port()
    es_url = f"http://127.0.0.1:{es_port}"
    es_log = (args.out / "standin.log").open("ab")
    es = subprocess.Popen(
        [sys.executable, "-m", "profiles.standin_serve", "--port", str(es_port)],
        cwd=ROOT,
        stdout=es_log,
        stderr=subprocess.STDOUT,
    )
    procs: dict[str, tuple[Any, str]] = {}
    steps: dict[tuple[float, str, str], Step] = {}
    try:
        wait_up(es_url)
        for label, root in variants.items():
            print(f"indexing the default corpus for {label}", flush=True)
            index_into(Path(root), es_url, f"docs-{label}", data_dir, args.out / "index.log")
            port = free_port()
            flags = ["--es-url", es_url, "--es-index", f"docs-{label}"]
            proc = start(Path(root), data_dir, port, flags, args.out / f"server-{label}.log")
            procs[label] = (proc, f"http://127.0.0.1:{port}")
        for proc, base in procs.values():
            wait_ready(base, proc)
        for ms in latencies:
            set_delay(es_url, ms)
            for rnd in range(args.rounds):
                order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
                for label in order:
                    proc, base = procs[label]
                    asyncio.run(sequential(base, queries, 10, Step()))  # this delay's paths
                    print(f"{ms:g} ms, round {rnd + 1}, {label}", flush=True)
                    c1 = steps.setdefault((ms, label, "c1"), Step())
                    measured(base, proc.pid, c1, sequential(base, queries, args.c1, c1))
                    load = steps.setdefault((ms, label, "rate"), Step())
                    run = at_rate(base, queries, args.rate, args.seconds, load)
                    measured(base, proc.pid, load, run)
    finally:
        for proc, _ in procs.values():
            stop(proc)
        es.terminate()
        es.wait(10)
    for (ms, label, kind), step in steps.items():
        row = report["results"].setdefault(f"{ms:g}", {}).setdefault(label, {})
        row["concurrency_1" if kind == "c1" else f"{args.rate:g}_rps"] = summary(step)
    report["runtime_s"] = round(time.monotonic() - t_run, 1)
    print_report(report)
    (args.out / "cluster.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out / 'cluster.json'} ({report['runtime_s']} s)")
    return 0


def wait_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n# {m['cpu']}, {m['cores']} cores, load average before {m['loadavg_before']:.2f}")
    print(
        "/v1/search in front of the stand-in cluster, service defaults (no budget_ms sent), "
        f"unique queries; open loop {report['rate']:g} req/s for {report['seconds']:g} s\n"
    )
    print(
        "| cluster | variant | load | errors | scored | p50 ms | p99 ms | ranking p50 ms "
        "| ranking p99 ms | server CPU ms / req | goal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ms, variants in report["results"].items():
        for label, loads in variants.items():
            for load, r in loads.items():
                scored = (
                    "-" if r["scored_fraction"] is None else f"{100 * r['scored_fraction']:.1f}%"
                )
                errors = (
                    r["errors"] if not r["error_kinds"] else f"{r['errors']} {r['error_kinds']}"
                )
                print(
                    f"| {ms} ms | {label} | {load.replace('_', ' ')} | {errors} | {scored} "
                    f"| {r['p50']} | {r['p99']} | {r['ranking_p50']} | {r['ranking_p99']} "
                    f"| {r['server_cpu_ms_per_request']} | {'met' if r['goal_met'] else 'missed'} |"
                )


if __name__ == "__main__":
    raise SystemExit(main())
