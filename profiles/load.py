"""`make bench`: `/v1/search` on the `make serve` set-up with unique queries, and warm starts.

    .venv/bin/python -m profiles.load [--rates 50,100,150,200,250,300] [--seconds 8] [--starts 3]
        [--variant LABEL=ROOT ...] [--rounds 1] [--serve-arg=--flag=value ...]

Every query text is different (windows of words cut from the default corpus, each used once
in the whole run): real traffic is mostly unique, and a repeated-query benchmark measures a
cache. Per variant (a checkout; default: this one) the service runs as its own process
(`python -m app serve`, default config: 20 ms budget, index-time vectors) and gets

- concurrency 1: p50/p99 of sequential requests;
- open loop at each rate (requests leave on schedule whatever the server does): p50/p99,
  errors, and the fraction of candidates model-scored (sum ``scored`` / sum ``candidates``
  of the answers: the budget hides saturation as unscored, BM25-ordered answers);
- the highest rate holding p99 <= 20 ms with >= 95% scored and no errors.

Several variants run side by side (each server started once, idle while the other is
loaded) and every step alternates between them, ``--rounds`` times: on a shared machine only
such interleaved comparisons mean anything.

Warm start (``--starts``): the service is started N times, calm and then while a process
burns a core; as soon as ``/readyz`` is 200 the first ``/v1/rerank`` (3 short documents) and
the first ``/v1/search`` go out (which goes first alternates); their scored counts and
latency are recorded.

Next to each step: the server's CPU per request by thread group and the time its threads
waited for a core (``/metrics``), the stages of the slowest 1% of answers, and a fixed host
reference before each round (the shared host's speed drifts). Last (``--profile-rate``), one
more step with py-spy attached to the first variant: where each thread's samples go, and the
event loop's hottest frames (``profiles/thread_profile.py``). Prints tables, writes
profiles/out/load/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from profiles import thread_profile
from profiles.harness import indexed, machine, parse_metrics
from profiles.loadgen import cpu_seconds
from profiles.process import free_port, stop, wait_ready
from profiles.report import read_collapsed

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "profiles" / "out" / "load"
BUDGET_MS = 20.0  # the service default; the targets are stated against it
RERANK_DOCS = [
    "Return a sorted list from the items in an iterable.",
    "Open file and return a stream; raise OSError upon failure.",
    "Create a new thread lock object.",
]


# --- workload -----------------------------------------------------------------------------
def unique_queries(corpus: Path, n: int, seed: int = 0) -> Iterator[str]:
    """``n`` different query texts: windows of 3-7 words at varying offsets of the corpus
    documents, shuffled; no text repeats."""
    docs = []
    with corpus.open() as f:
        for line in f:
            d = json.loads(line)
            words = re.findall(r"[A-Za-z][A-Za-z_]+", f"{d['title']} {d['text']}")
            if len(words) >= 3:
                docs.append(words)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(n * 20):
        words = rng.choice(docs)
        size = rng.randint(3, 7)
        start = rng.randint(0, max(0, len(words) - size))
        q = " ".join(words[start : start + size]).lower()
        if q not in seen:
            seen.add(q)
            out.append(q)
            if len(out) == n:
                break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} unique queries from {corpus}; fewer/shorter steps")
    return iter(out)


# --- load ---------------------------------------------------------------------------------
def pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)


class Step:
    """What one variant's answers at one offered rate came to (several rounds pooled)."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.errors: dict[str, int] = {}
        self.scored = 0
        self.candidates = 0
        self.sent = 0
        self.calls = 0.0  # model calls, from the server's /metrics around each step
        self.texts = 0.0
        self.requests = 0.0
        self.server_cpu = 0.0  # CPU seconds the server process used during the step
        self.client_cpu = 0.0  # and this load generator
        self.threads: dict[str, float] = {}  # server CPU seconds by thread group (/metrics)
        self.runq_wait = 0.0  # seconds the server's threads waited for a core
        self.timed: list[tuple[float, dict[str, float]]] = []  # (latency, body timings)

    def add(self, status: str, seconds: float, body: dict[str, Any] | None) -> None:
        self.sent += 1
        if status != "200" or body is None:
            self.errors[status] = self.errors.get(status, 0) + 1
            return
        self.lat.append(seconds)
        self.timed.append((seconds, body.get("timings") or {}))
        self.scored += int(body["scored"])
        self.candidates += int(body["candidates"])

    def slowest(self) -> dict[str, Any] | None:
        """Where the slowest 1% of answers spent their time: the median of each stage the
        server timed, and of what lies outside its handler (client latency minus the
        server's total: the accept queue, the loop's backlog, the wire)."""
        if not self.timed:
            return None
        cut = sorted(self.timed, key=lambda t: t[0])[-max(1, len(self.timed) // 100) :]
        stages: dict[str, list[float]] = {}
        for secs, timings in cut:
            for k, v in timings.items():
                stages.setdefault(k, []).append(v)
            stages.setdefault("outside", []).append(1000 * secs - timings.get("total", 0.0))
        return {
            "requests": len(cut),
            "latency_ms": pct([t[0] for t in cut], 0.5),
            **{k: round(sorted(v)[len(v) // 2], 2) for k, v in stages.items()},
        }

    def summary(self) -> dict[str, Any]:
        per_request = 1000 / self.sent if self.sent else 0.0
        return {
            "sent": self.sent,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "p50": pct(self.lat, 0.5),
            "p99": pct(self.lat, 0.99),
            "scored_fraction": round(self.scored / self.candidates, 3) if self.candidates else None,
            "model_calls_per_request": round(self.calls / self.requests, 2)
            if self.requests
            else None,
            "texts_per_call": round(self.texts / self.calls, 2) if self.calls else None,
            # What a request costs the cores: the rate the machine can hold is about
            # cores / (server + client CPU per request).
            "server_cpu_ms_per_request": round(1000 * self.server_cpu / self.sent, 2)
            if self.sent
            else None,
            # Which thread a rate runs out of, and whether the cores themselves were short.
            "thread_cpu_ms_per_request": {
                k: round(v * per_request, 2) for k, v in sorted(self.threads.items())
            },
            "runqueue_wait_ms_per_request": round(self.runq_wait * per_request, 2),
            "slowest_1pct": self.slowest(),
            "client_cpu_ms_per_request": round(1000 * self.client_cpu / self.sent, 2)
            if self.sent
            else None,
        }


async def post(
    s: aiohttp.ClientSession, url: str, payload: dict[str, Any]
) -> tuple[str, float, dict[str, Any] | None]:
    t0 = time.perf_counter()
    try:
        async with s.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=10)) as r:
            raw = await r.read()
            dt = time.perf_counter() - t0
            return str(r.status), dt, json.loads(raw) if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, time.perf_counter() - t0, None


async def sequential(base: str, queries: Iterator[str], n: int, step: Step) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            step.add(*await post(s, base + "/v1/search", {"query": next(queries)}))


async def open_loop(
    base: str, queries: Iterator[str], rate: float, seconds: float, step: Step
) -> None:
    """Requests leave at fixed instants whatever the server does: queueing shows up as
    latency instead of silently lowering the offered load."""
    url = base + "/v1/search"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        tasks = []
        t0 = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(post(s, url, {"query": next(queries)})))
        for res in await asyncio.gather(*tasks):
            step.add(*res)


COUNTERS = {
    "calls": ("rerank_batch_size_count", frozenset()),
    "texts": ("rerank_batch_size_sum", frozenset()),
    "requests": (
        "rerank_http_requests_total",
        frozenset({"endpoint": "/v1/search", "method": "POST", "status": "200"}.items()),
    ),
}


THREAD_CPU = "rerank_thread_cpu_seconds_total"
THREAD_WAIT = "rerank_thread_runqueue_wait_seconds_total"


async def counters(base: str) -> dict[str, float]:
    """The COUNTERS, plus ``cpu:<thread group>`` and ``wait`` (all groups' run-queue wait)."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        m = parse_metrics(await r.text())
    out = {k: m.get(key, 0.0) for k, key in COUNTERS.items()}
    out["wait"] = 0.0
    for (name, labels), v in m.items():
        group = dict(labels).get("thread", "")
        if name == THREAD_CPU:
            out[f"cpu:{group}"] = v
        elif name == THREAD_WAIT:
            out["wait"] += v
    return out


def measured(base: str, pid: int, step: Step, run: Any) -> None:
    """Run one step's coroutine and add the server's model calls and requests it made,
    and the CPU the server and this process spent on it."""
    before = asyncio.run(counters(base))
    cpu0, mine0 = cpu_seconds(pid), time.process_time()
    asyncio.run(run)
    step.server_cpu += cpu_seconds(pid) - cpu0
    step.client_cpu += time.process_time() - mine0
    after = asyncio.run(counters(base))
    step.calls += after["calls"] - before["calls"]
    step.texts += after["texts"] - before["texts"]
    step.requests += after["requests"] - before["requests"]
    step.runq_wait += after["wait"] - before["wait"]
    for k, v in after.items():
        if k.startswith("cpu:"):
            group = k[4:]
            step.threads[group] = step.threads.get(group, 0.0) + v - before.get(k, 0.0)


def host_reference_ms(data_dir: Path, runs: int = 60) -> float:
    """Median time of one fixed 8-token query on a one-thread ONNX Runtime session of the
    served model: the same work every time, so its drift between rounds is the host's (the
    cores are shared; seen here: 0.8 to 2.2 ms within one hour). Read next to each round."""
    import numpy as np

    from app.config import Config
    from rerank.model import OnnxModel
    from rerank.tokenization import Batch

    cfg = Config().override(data_dir=data_dir)
    model = OnnxModel(cfg.resolved_model_dir, intra_op_threads=1, precision=cfg.engine.precision)
    ids = np.array([[101, 2054, 2003, 1037, 3899, 1997, 4957, 102]], dtype=np.int64)
    batch = Batch(ids, np.ones_like(ids), np.zeros_like(ids))
    times = []
    for _ in range(runs + 5):
        t0 = time.perf_counter()
        model.run(batch)
        times.append(time.perf_counter() - t0)
    return round(1000 * sorted(times[5:])[runs // 2], 3)


def profiled(server: tuple[Any, str], label: str, queries: Iterator[str], args: Any) -> Any:
    """One more open-loop step at ``--profile-rate`` with py-spy attached to the server."""
    proc, base = server
    args.out.mkdir(parents=True, exist_ok=True)
    stacks = args.out / f"profile-{label}.txt"
    spy = thread_profile.start(proc.pid, args.seconds, stacks, rate=250)
    if isinstance(spy, str):
        return {"skipped": spy}
    asyncio.run(open_loop(base, queries, args.profile_rate, args.seconds, Step()))
    why = thread_profile.finish(spy, stacks)
    if why is not None:
        return {"skipped": why}
    summary = thread_profile.summarize(read_collapsed(stacks))
    return {"rate": args.profile_rate, "variant": label, "stacks": str(stacks), **summary}


# --- servers ------------------------------------------------------------------------------
def start(root: Path, data_dir: Path, port: int, extra: Sequence[str], log: Path) -> Any:
    root = root.resolve()
    env = {**os.environ, "PYTHONPATH": str(root), "RERANK_LOG_FORMAT": "json"}
    cmd = [sys.executable, "-m", "app", "serve", "--data-dir", str(data_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *extra]
    f = log.open("ab")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT)


def _burn(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x += 1


async def first_requests(base: str, query: str, rerank_first: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"rerank_first": rerank_first}
    async with aiohttp.ClientSession() as s:
        for kind in ("rerank", "search") if rerank_first else ("search", "rerank"):
            total: int | None
            if kind == "rerank":
                status, dt, body = await post(
                    s, base + "/v1/rerank", {"query": query, "documents": RERANK_DOCS}
                )
                scored = body["meta"]["scored"] if body else None
                total = len(RERANK_DOCS)
            else:
                status, dt, body = await post(s, base + "/v1/search", {"query": query})
                scored = body["scored"] if body else None
                total = body["candidates"] if body else None
            out[kind] = {"status": status, "ms": round(dt * 1000, 2), "scored": scored, "of": total}
    return out


def warm_start(
    root: Path, data_dir: Path, extra: Sequence[str], i: int, query: str, burn: bool
) -> dict[str, Any]:
    port = free_port()
    t0 = time.monotonic()
    proc = start(root, data_dir, port, extra, OUT / "server-starts.log")
    burner = None
    if burn:  # a neighbour taking a core while the service starts and answers
        burner = multiprocessing.Process(target=_burn, args=(time.monotonic() + 120,))
        burner.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, timeout_s=180)
        ready_s = time.monotonic() - t0
        row = asyncio.run(first_requests(base, query, rerank_first=i % 2 == 0))
        row.update(start=i, burn=burn, ready_s=round(ready_s, 2))
        return row
    finally:
        if burner is not None:
            burner.terminate()
            burner.join()
        stop(proc)


# --- main ---------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="50,100,150,200,250,300")
    ap.add_argument("--seconds", type=float, default=8.0, help="per rate and round (8)")
    ap.add_argument("--c1", type=int, default=200, help="sequential requests (200)")
    ap.add_argument("--rounds", type=int, default=1, help="alternations per step (1)")
    ap.add_argument("--starts", type=int, default=3, help="warm-start checks, calm and burning")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="'LABEL=ROOT [serve flags]', repeatable: --variant 'nospin=. --spinning=false'",
    )
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `serve` flag")
    ap.add_argument(
        "--profile-rate",
        type=float,
        default=200.0,
        help="py-spy on the first variant for one extra step at this rate (0: none)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir.resolve()
    if not indexed(data_dir / "index" / "default"):
        raise SystemExit(f"no default index in {data_dir}: run `make index` first")
    # LABEL=ROOT [serve flags...]: a checkout, and flags for that variant alone.
    variants: dict[str, tuple[str, list[str]]] = {}
    for v in args.variant:
        label, spec = v.split("=", 1)
        root, *flags = spec.split()
        variants[label] = (root, [*args.serve_arg, *flags])
    variants = variants or {"this": (str(ROOT), list(args.serve_arg))}
    rates = [float(r) for r in args.rates.split(",") if r]
    per_round = args.c1 + int(sum(r * args.seconds for r in rates))
    profile_n = int(args.profile_rate * args.seconds)
    need = (per_round * args.rounds + 50 + 2 * args.starts) * len(variants) + profile_n + 100
    queries = unique_queries(data_dir / "corpus" / "stdlib" / "corpus.jsonl", need)
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m profiles.load", *sys.argv[1:]]),
        "budget_ms": BUDGET_MS,
        "seconds_per_rate": args.seconds,
        "rounds": args.rounds,
        "host_reference_ms": [],  # host_reference_ms() before each round
        "variants": {},
    }
    t_run = time.monotonic()
    procs: dict[str, tuple[Any, str]] = {}
    steps: dict[str, dict[str, Step]] = {v: {} for v in variants}
    try:
        for label, (root, flags) in variants.items():
            port = free_port()
            proc = start(Path(root), data_dir, port, flags, OUT / f"server-{label}.log")
            procs[label] = (proc, f"http://127.0.0.1:{port}")
        for proc, base in procs.values():
            wait_ready(base, proc)
            asyncio.run(sequential(base, queries, 50, Step()))  # warm the connection paths
        for rnd in range(args.rounds):
            report["host_reference_ms"].append(host_reference_ms(data_dir))
            order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for name in ["c1", *map(str, rates)]:
                for label in order:
                    proc, base = procs[label]
                    step = steps[label].setdefault(name, Step())
                    print(f"round {rnd + 1} {label}: {name}", flush=True)
                    if name == "c1":
                        measured(base, proc.pid, step, sequential(base, queries, args.c1, step))
                    else:
                        rate = float(name)
                        run = open_loop(base, queries, rate, args.seconds, step)
                        measured(base, proc.pid, step, run)
        if args.profile_rate > 0:
            label = next(iter(variants))
            print(f"profile {label}: {args.profile_rate:g} req/s", flush=True)
            report["profile"] = profiled(procs[label], label, queries, args)
    finally:
        for proc, _ in procs.values():
            stop(proc)
    for label, (root, flags) in variants.items():
        runs = [{"rate": float(k), **s.summary()} for k, s in steps[label].items() if k != "c1"]
        ok = [
            r["rate"]
            for r in runs
            if r["p99"] is not None
            and r["p99"] <= BUDGET_MS
            and (r["scored_fraction"] or 0) >= 0.95
            and not r["errors"]
        ]
        report["variants"][label] = {
            "root": root,
            "serve_flags": flags,
            "concurrency_1": steps[label]["c1"].summary(),
            "runs": runs,
            "max_rate_p99_le_20ms_scored_ge_95": max(ok) if ok else None,
            "warm_starts": [],
        }
    for burn in (False, True):  # variants alternate start by start
        for i in range(args.starts):
            for label, (root, flags) in variants.items():
                print(f"warm start {i + 1} {label} burn={burn}", flush=True)
                report["variants"][label]["warm_starts"].append(
                    warm_start(Path(root), data_dir, flags, i, next(queries), burn)
                )
    report["runtime_s"] = round(time.monotonic() - t_run, 1)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out / 'load.json'} ({report['runtime_s']} s)")
    return 0


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


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
