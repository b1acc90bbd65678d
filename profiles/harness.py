"""What every profile run shares: the workload, the served process, the load, the metrics.

A run builds what it needs (default model, an embedded index of Cranfield or of the default
corpus), starts ``python -m app serve`` on a free loopback port (embedded backend, default
config: 20 ms budget), waits for ``/readyz``, drives a closed-loop load of ``/v1/search``
requests for a set time, scrapes ``/metrics`` before and after, and stops the server with
SIGINT (graceful). Each profile kind plugs in how the process is started or attached to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.process import running

ROOT = Path(__file__).resolve().parent.parent
CRANFIELD = ROOT.parent / "shared" / "datasets" / "cranfield"
OUT = ROOT / "profiles" / "out"
PY = sys.executable


@dataclass
class Workload:
    name: str
    index_dir: Path
    queries: list[str]


def _run(cmd: Sequence[str]) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), cwd=ROOT, check=True)


def indexed(index_dir: Path) -> bool:
    """A built embedded index: the ``current`` pointer, or the older flat layout."""
    return (index_dir / "current").is_file() or (index_dir / "meta.json").is_file()


def prepare(data_dir: Path) -> Workload:
    """The default model and an embedded index; Cranfield queries when ``../shared`` has
    them, else queries cut from the default corpus (standard-library docstrings)."""
    if not (data_dir / "models" / "all-MiniLM-L6-v2" / "model.int8.onnx").is_file():
        _run([PY, "-m", "app", "model", "--data-dir", str(data_dir)])
    if (CRANFIELD / "corpus.jsonl").is_file():
        index_dir = data_dir / "index" / "cranfield"
        if not indexed(index_dir):
            _run(
                [
                    PY,
                    "-m",
                    "app",
                    "index",
                    "--dataset",
                    str(CRANFIELD),
                    "--index-dir",
                    str(index_dir),
                    "--data-dir",
                    str(data_dir),
                ]
            )
        lines = (CRANFIELD / "queries.jsonl").read_text().splitlines()
        return Workload("cranfield", index_dir, [json.loads(x)["text"] for x in lines if x])
    index_dir = data_dir / "index" / "default"
    if not indexed(index_dir):
        _run([PY, "-m", "app", "index", "--default", "--data-dir", str(data_dir)])
    queries = []
    with (data_dir / "corpus" / "stdlib" / "corpus.jsonl").open() as f:
        for line in f:
            words = json.loads(line)["text"].split()[:8]
            if len(words) >= 3:
                queries.append(" ".join(words))
            if len(queries) >= 300:
                break
    return Workload("default corpus (stdlib docstrings)", index_dir, queries)


def serve_args(data_dir: Path, wl: Workload, port: int, extra: Sequence[str] = ()) -> list[str]:
    """Arguments after ``python -m app``."""
    return [
        "serve",
        "--data-dir",
        str(data_dir),
        "--index-dir",
        str(wl.index_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@dataclass
class LoadResult:
    seconds: float
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    partial: int = 0
    errors: int = 0
    before: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    after: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def moved(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        n = len(lat)
        search = {"endpoint": "/v1/search", "method": "POST", "status": "200"}
        wall = self.moved("rerank_http_request_duration_seconds_sum", **search)
        stages = {
            s: self.moved("rerank_stage_duration_seconds_sum", stage=s)
            for s in ("retrieve", "tokenize", "infer", "respond")
        }
        stages["queue_wait"] = self.moved("rerank_queue_wait_seconds_sum")
        real = self.moved("rerank_tokens_total", kind="real")
        return {
            "seconds": round(self.seconds, 2),
            "concurrency": self.concurrency,
            "requests": n,
            "rps": round(n / self.seconds, 1) if self.seconds else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "partial": self.partial,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
            "server": {
                "requests": self.moved("rerank_http_requests_total", **search),
                "wall_s": wall,
                "stages_s": stages,
                "model_calls": self.moved("rerank_batch_size_count"),
                "queue_waits": self.moved("rerank_queue_wait_seconds_count"),
                "model_call_s": self.moved("rerank_model_call_duration_seconds_sum"),
                "texts_scored": self.moved("rerank_batch_size_sum"),
                "tokens_real": real,
                "tokens_padded": real + self.moved("rerank_tokens_total", kind="padding"),
            },
        }


async def _scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        return parse_metrics(await r.text())


async def drive(base: str, queries: list[str], seconds: float, concurrency: int) -> LoadResult:
    """Closed loop: ``concurrency`` clients, each sending its next query when answered."""
    import aiohttp

    res = LoadResult(seconds, concurrency)
    res.before = await _scrape(base)
    bodies = [json.dumps({"query": q}).encode() for q in queries]
    counter = iter(range(10**12))
    t_end = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < t_end:
            body = bodies[next(counter) % len(bodies)]
            t0 = time.perf_counter()
            try:
                async with session.post(
                    base + "/v1/search",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    payload = await r.read()
                    res.statuses[r.status] = res.statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        res.latencies.append(time.perf_counter() - t0)
                        res.partial += bool(json.loads(payload)["partial"])
            except (aiohttp.ClientError, TimeoutError):
                res.errors += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    res.seconds = time.monotonic() - t0
    res.after = await _scrape(base)
    return res


def serve_and_load(
    cmd: Sequence[str],
    port: int,
    out_dir: Path,
    wl: Workload,
    *,
    seconds: float,
    concurrency: int,
    on_ready: Callable[[subprocess.Popen[bytes]], None] = lambda p: None,
    on_done: Callable[[subprocess.Popen[bytes]], None] = lambda p: None,
) -> LoadResult:
    """Start ``cmd`` (a server on ``port``), load it, stop it; its log goes to server.log."""
    base = f"http://127.0.0.1:{port}"
    env = {"RERANK_LOG_FORMAT": "json"}
    with running(cmd, port, out_dir / "server.log", env=env) as proc:
        on_ready(proc)
        print(f"load: {concurrency} clients for {seconds:.0f}s against {base}", flush=True)
        result = asyncio.run(drive(base, wl.queries, seconds, concurrency))
        on_done(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"server exited with {proc.returncode}; see {out_dir / 'server.log'}")
    return result


def machine() -> dict[str, Any]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg()[0],
    }


def common_args(description: str) -> Any:
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration (default 20)")
    ap.add_argument("--concurrency", type=int, default=4, help="closed-loop clients (4)")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var", help="model and indexes")
    ap.add_argument("--out", type=Path, default=None, help="output dir (profiles/out/KIND)")
    ap.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra flag for `app serve`, repeatable: --serve-arg=--budget-ms=50",
    )
    return ap
