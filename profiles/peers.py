"""`make bench-peers`: our service against Infinity, on the same cross-encoder and equal work.

    .venv/bin/python -m profiles.peers [--seconds 20] [--rounds 2] [--max-length 512]

Infinity (``infinity-emb``, the self-hosted rerank server many teams pick) is installed by
``make bench-peers`` into its own virtual environment (var/peers/infinity, with the local CPU
torch wheel); it is never a dependency of the service or of CI. Both serve the same
directory: the MiniLM-L6 cross-encoder built here (tools/crossencoder.py; an HF
``BertForSequenceClassification`` checkpoint next to our ONNX files). Work is equal: the
same max length (Infinity truncates at the model's 512 positions; we are started with
``--max-length`` 512), each request 1 Cranfield query + 20 Cranfield documents that no
earlier step sent (and our pair cache off), fp32 against fp32 and our default
int8 beside them. Closed loop at concurrency 1 and 8, the servers alternated step by step
(``--rounds``): docs/s, p50/p99; and the Spearman correlation of each of ours with
Infinity's scores over the same 20 requests. Writes profiles/out/peers/peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from profiles.loadgen import clients, nearest_rank
from profiles.process import free_port, serve, stop
from profiles.workloads import cranfield_queries, cranfield_texts
from profiles.zipf import ROOT, cross_encoder

OUT = ROOT / "profiles" / "out" / "peers"
INFINITY = ROOT / "var" / "peers" / "infinity" / "bin" / "infinity_emb"


def requests_of(n_docs: int = 20) -> Iterator[dict[str, Any]]:
    """Endless bodies: queries in turn, documents never repeated (the corpus wraps once
    exhausted: 1398 documents, 69 requests)."""
    queries, texts = cranfield_queries(), cranfield_texts()
    i = 0
    while True:
        start = (i * n_docs) % (len(texts) - n_docs)
        yield {"query": queries[i % len(queries)], "documents": texts[start : start + n_docs]}
        i += 1


@contextlib.contextmanager
def infinity(cmd: Sequence[str], port: int, log: Path, timeout_s: float = 600) -> Iterator[None]:
    """Infinity's server until it answers ``/health`` (it has no ``/readyz``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    with log.open("wb") as f:
        proc = subprocess.Popen(list(cmd), env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"infinity exited with {proc.returncode}; see {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"infinity not ready after {timeout_s}s; see {log}")
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{port}/health"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                time.sleep(0.5)
            yield
        finally:
            stop(proc)


class Peer:
    def __init__(self, name: str, base: str, path: str, model: str | None = None) -> None:
        self.name, self.url, self.model = name, base + path, model

    def body(self, req: dict[str, Any]) -> dict[str, Any]:
        return req | ({"model": self.model} if self.model else {})

    async def scores(self, s: aiohttp.ClientSession, req: dict[str, Any]) -> list[float]:
        async with s.post(self.url, json=self.body(req)) as r:
            assert r.status == 200, f"{self.name}: {r.status} {await r.text()}"
            got = await r.json()
        out = [0.0] * len(req["documents"])
        for res in got["results"]:
            out[res["index"]] = res["relevance_score"]
        return out


async def peer_load(
    peer: Peer, reqs: Iterator[dict[str, Any]], concurrency: int, seconds: float
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def send(i: int) -> bool:
            await peer.scores(s, next(reqs))
            return True

        lat, wall = await clients(send, concurrency, seconds)
    return {
        "requests": len(lat),
        "docs_per_s": 20 * len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * nearest_rank(lat, 0.99),
    }


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


async def agreement(peers: list[Peer], n: int = 20) -> dict[str, Any]:
    reqs = requests_of()
    got: dict[str, list[list[float]]] = {p.name: [] for p in peers}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            req = next(reqs)
            for p in peers:
                got[p.name].append(await p.scores(s, req))
    ref = got["infinity-fp32"]
    out: dict[str, Any] = {}
    for name, runs in got.items():
        if name != "infinity-fp32":
            out[name] = {
                "spearman": statistics.mean(spearman(a, b) for a, b in zip(runs, ref, strict=True)),
                "max_abs_diff": max(
                    float(np.abs(np.array(a) - np.array(b)).max())
                    for a, b in zip(runs, ref, strict=True)
                ),
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not INFINITY.is_file():
        print(f"peers: no Infinity at {INFINITY} (make bench-peers installs it)")
        return 2
    model = cross_encoder()
    args.out.mkdir(parents=True, exist_ok=True)
    ours = ["--model-dir", str(model), "--max-length", str(args.max_length)]
    # No pair cache: Infinity has none, and the agreement pass sends what the steps send.
    ours += ["--rerank-max-ms", "300000", "--data-dir", str(ROOT / "var"), "--cache-mb", "0"]
    p_int8, p_fp32, p_inf = free_port(), free_port(), free_port()
    inf_cmd = [str(INFINITY), "v2", "--model-id", str(model), "--engine", "torch"]
    inf_cmd += ["--device", "cpu", "--port", str(p_inf)]
    with (
        serve([*ours, "--precision", "int8"], p_int8, args.out, timeout_s=300),
        serve([*ours, "--precision", "fp32"], p_fp32, args.out, timeout_s=300),
        infinity(inf_cmd, p_inf, args.out / f"infinity-{p_inf}.log"),
    ):
        peers = [
            Peer("ours-int8", f"http://127.0.0.1:{p_int8}", "/v1/rerank"),
            Peer("ours-fp32", f"http://127.0.0.1:{p_fp32}", "/v1/rerank"),
            Peer("infinity-fp32", f"http://127.0.0.1:{p_inf}", "/rerank", str(model)),
        ]
        report: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}}
        report["agreement"] = asyncio.run(agreement(peers))
        print(json.dumps(report["agreement"]))
        reqs = requests_of()
        steps: list[dict[str, Any]] = []
        for conc in (int(c) for c in args.concurrency.split(",")):
            for rnd in range(args.rounds):
                for p in peers:
                    got = asyncio.run(peer_load(p, reqs, conc, args.seconds))
                    steps.append({"peer": p.name, "concurrency": conc, "round": rnd, **got})
                    print(json.dumps(steps[-1]))
        report["steps"] = steps
    (args.out / "peers.json").write_text(json.dumps(report, indent=2))
    print("| server | concurrency | docs/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for conc in sorted({s["concurrency"] for s in steps}):
        for p in peers:
            mine = [s for s in steps if s["peer"] == p.name and s["concurrency"] == conc]
            med = {
                k: statistics.median(s[k] for s in mine) for k in ("docs_per_s", "p50_ms", "p99_ms")
            }
            print(
                f"| {p.name} | {conc} | {med['docs_per_s']:.1f} | {med['p50_ms']:.0f} | "
                f"{med['p99_ms']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
