"""Turning a profile run into files a person reads: the markdown report (stage shares, CPU by
category, top 3 hot spots) and, for sampled stacks, a speedscope JSON (the flame graph SVG:
profiles/flame.py).

Two views, because they answer different questions:
- wall time per stage comes from the service's own ``/metrics`` (what a request waited for);
- CPU per category comes from the profiler (what the process spent its cores on), each
  sample or function classified by the first library/module it matches.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# First match wins, from the innermost frame outwards. Service code and the HTTP/event-loop
# layer are only tried once no library below matched.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("infer (ONNX Runtime)", ("onnxruntime",)),
    ("tokenize (tokenizers)", ("tokenizers", "tokenization.py")),
    ("retrieve (tantivy / ES client)", ("tantivy", "embedded.py", "elasticsearch", "elastic_")),
    ("JSON (orjson)", ("orjson", "json_response")),
    ("validation (pydantic)", ("pydantic",)),
    ("logging", ("logging/", "app/logs.py", "'logging'")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
]
SERVICE = ("service Python (app, rerank, retrieval)", ("app/", "rerank/", "retrieval/"))
HTTP = ("HTTP server + event loop (aiohttp, asyncio, uvloop)", ("aiohttp", "asyncio", "uvloop"))
OTHER = "other"
# Waiting, not working: blocked in epoll, on a lock, a condition or an empty executor queue
# (pstats builtin names and native symbols, lower case).
IDLE = (
    "'acquire' of '_thread.lock'",
    "of 'select.epoll'",
    "time.sleep",
    "'get' of '_queue.simplequeue'",
    "'run_until_complete' of 'uvloop.loop.loop'",
    "'run_forever' of 'uvloop.loop.loop'",
    "epoll",
    "uv__io_poll",
    "pthread_cond",
    "sem_wait",
    "sem_clockwait",
    "futex",
    "nanosleep",
    "pythread_acquire_lock",
    "_queue_simplequeue_get",
    # Python frames only: an executor thread whose innermost frame is its worker loop is
    # waiting on the work queue (the call into C below it is not sampled).
    "_worker (concurrent/futures/thread.py",
)
_ADDRESS = re.compile(r"^0x[0-9a-f]+ \((.*)\)$")  # a native frame without a symbol


def is_idle(label: str) -> bool:
    low = label.lower()
    return any(p in low for p in IDLE)


def is_idle_stack(stack: Sequence[str]) -> bool:
    """Root first. Decided by the innermost frame that has a name."""
    for f in reversed(stack):
        if not _ADDRESS.match(f):
            return is_idle(f)
    return False


def _innermost_python(lows: Sequence[str]) -> str | None:
    return next((f for f in lows if ".py:" in f or ".py " in f or f.endswith(".py")), None)


def classify(stack: Sequence[str]) -> str:
    """``stack`` innermost frame first (one label for a pstats function). Libraries match
    anywhere in the stack; otherwise the innermost Python frame says whose code it is."""
    lows = [f.lower() for f in stack if not f.startswith("thread (")]
    for low in lows:
        for name, pats in CATEGORIES:
            if any(p in low for p in pats):
                return name
    py = _innermost_python(lows)
    for name, pats in (SERVICE, HTTP):
        if py is not None and any(p in py for p in pats):
            return name
    if any("uvloop" in low or "loop.c:" in low for low in lows):
        return HTTP[0]
    return OTHER


# --- sampled stacks (py-spy --format raw: "root;...;leaf COUNT") ----------------------------
Samples = list[tuple[list[str], int]]


def read_collapsed(path: Path) -> Samples:
    out: Samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def busy(samples: Samples) -> Samples:
    return [(s, n) for s, n in samples if not is_idle_stack(s)]


def categories_of(samples: Samples) -> Counter[str]:
    c: Counter[str] = Counter()
    for stack, n in samples:
        c[classify(stack[::-1])] += n
    return c


_PY_FRAME = re.compile(r"\.py:\d+\)$")


def hot_spots_sampled(samples: Samples, top: int = 3) -> list[tuple[str, int, str]]:
    """Innermost Python frame of each busy sample (native time below it included)."""
    c: Counter[str] = Counter()
    cat: dict[str, str] = {}
    for stack, n in busy(samples):
        frame = next((f for f in reversed(stack) if _PY_FRAME.search(f)), None)
        if frame is None:  # native only (a thread py-spy could not tie to Python frames)
            m = _ADDRESS.match(stack[-1])
            frame = f"native code in {m.group(1)}" if m else stack[-1]
        c[frame] += n
        cat.setdefault(frame, classify(stack[::-1]))
    return [(f, n, cat[f]) for f, n in c.most_common(top)]


def write_speedscope(samples: Samples, path: Path, name: str) -> None:
    index: dict[str, int] = {}
    stacks, weights = [], []
    for stack, n in samples:
        stacks.append([index.setdefault(f, len(index)) for f in stack])
        weights.append(n)
    doc = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": f} for f in index]},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": stacks,
                "weights": weights,
            }
        ],
        "name": name,
        "exporter": "profiles/report.py",
    }
    path.write_text(json.dumps(doc))


# --- markdown -----------------------------------------------------------------------------
def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def stage_table(summary: dict[str, Any]) -> str:
    srv = summary["server"]
    n, wall, st = srv["requests"], srv["wall_s"], srv["stages_s"]
    rows = [
        ("retrieve (embedded index / ES wait)", st["retrieve"]),
        ("tokenize", st["tokenize"]),
        ("infer", st["infer"]),
        ("respond: build and serialise the response, write it", st["respond"]),
    ]
    rest = wall - sum(s for _, s in rows)
    rows.append(
        ("the rest: waiting for the scoring thread or the deadline, parsing, ranking", rest)
    )
    lines = [
        "| stage | share of request wall time | mean per request (ms) |",
        "| --- | ---: | ---: |",
    ]
    for name, s in rows:
        lines.append(f"| {name} | {_pct(s, wall)} | {1000 * s / n:.2f} |" if n else "")
    calls, waits = srv["model_calls"], srv["queue_waits"]
    if waits:
        lines += [
            "",
            f"Queue wait for the scoring thread: {1000 * st['queue_wait'] / waits:.2f} ms mean "
            f"over {waits:.0f} batches that reached it ({calls:.0f} ran the model, the rest had "
            "missed their deadline; batches cancelled before reaching it are not counted). It "
            "overlaps earlier batches, so it is not a row above. Padding: "
            f"{_pct(srv['tokens_padded'] - srv['tokens_real'], srv['tokens_padded'])} of the "
            "tokens computed.",
        ]
    late = srv["model_call_s"] - st["infer"]
    if srv["model_call_s"] > 0:
        lines += [
            "",
            f"Model calls took {srv['model_call_s']:.2f} s of inference in all; "
            f"{_pct(late, srv['model_call_s'])} of it finished after its request had "
            "answered (partial, at the deadline): computed, then thrown away.",
        ]
    scored = srv["texts_scored"] / n if n else 0.0
    lines += [
        "",
        f"Texts through the model per request: {scored:.2f}. Tokenize and infer above count "
        "only the model calls whose request still waited for them.",
    ]
    return "\n".join(lines)


def category_table(counts: Counter[str] | dict[str, float], unit: str) -> str:
    total = sum(counts.values())
    lines = [f"| category | share of {unit} |", "| --- | ---: |"]
    for name, v in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {_pct(v, total)} |")
    return "\n".join(lines)


def load_section(summary: dict[str, Any], wl_name: str, n_queries: int) -> str:
    lat = summary["latency_ms"]
    extra = " ".join(summary.get("serve_args", []))
    conf = "defaults (20 ms budget, 20 candidates, max_length 256)"
    conf = f"{conf} overridden by `{extra}`" if extra else conf
    return (
        f"Workload: {n_queries} queries from {wl_name}, `/v1/search` on the embedded backend "
        f"with the config {conf}, {summary['concurrency']} closed-loop "
        f"clients for {summary['seconds']} s.\n\n"
        f"Served {summary['requests']} requests ({summary['rps']} req/s), statuses "
        f"{summary['statuses']}, client errors {summary['errors']}; latency p50 {lat['p50']} ms, "
        f"p95 {lat['p95']} ms, p99 {lat['p99']} ms; partial answers {summary['partial']} "
        f"({_pct(summary['partial'], summary['requests'])})."
    )


def write_report(
    path: Path,
    *,
    title: str,
    machine: dict[str, Any],
    intro: str,
    summary: dict[str, Any],
    wl_name: str,
    n_queries: int,
    cpu: str,
    hot: Iterable[str],
    files: Iterable[str],
    notes: Iterable[str] = (),
) -> None:
    parts = [
        f"# {title}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine['cpu']}, "
        f"{machine['cores']} cores, Python {machine['python']} (load average before the run: "
        f"{machine['loadavg_before']:.2f}; the load generator shares these cores).",
        "",
        intro,
        "",
        "## Load",
        "",
        load_section(summary, wl_name, n_queries),
        "",
        "## Wall time per stage (the service's own timings, from /metrics)",
        "",
        stage_table(summary),
        "",
        "## CPU by category (profiler)",
        "",
        cpu,
        "",
        "## Top 3 hot spots",
        "",
        *[f"{i}. {h}" for i, h in enumerate(hot, 1)],
        "",
        "## Files",
        "",
        *[f"- {f}" for f in files],
    ]
    notes = list(notes)
    if notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    path.write_text("\n".join(parts) + "\n")
