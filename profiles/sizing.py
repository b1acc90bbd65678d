"""Sizing: model time for candidates x max length x cores, measured, with the cost model's
prediction beside it (the table in deploy/README.md).

    .venv/bin/python profiles/sizing.py [--threads 1,2] [--lengths 128,256]
        [--candidates 10,20,50] [--repeat 3]

For the default bi-encoder (documents through the model: a cold search, no index vectors
or cache) and the MiniLM-L6 cross-encoder (tools/crossencoder.py), int8 as served: one
Cranfield query and its first ``N`` Cranfield documents (``title. text``, cut at the max
length), scored by the engine's own path (``ScoringEngine.score``: one shared call, length
groups), median of ``--repeat``. ``predicted`` is what the engine's cost model, fitted by its
own warm-up on this machine, says the same call takes: what the batcher uses to decide what
fits a budget. Prints a markdown table; writes profiles/out/sizing/sizing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from profiles.zipf import CRANFIELD, ROOT, cross_encoder
from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.model import ModelKind

OUT = ROOT / "profiles" / "out" / "sizing"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--lengths", default="128,256")
    ap.add_argument("--candidates", default="10,20,50")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    query = json.loads((CRANFIELD / "queries.jsonl").open().readline())["text"]
    docs = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").open()]
    texts = [f"{d.get('title', '')}. {d['text']}".strip(". ") for d in docs]
    models = {
        "bi-encoder (all-MiniLM-L6-v2)": ROOT / "var" / "models" / "all-MiniLM-L6-v2",
        "cross-encoder (MiniLM-L6)": cross_encoder(),
    }
    rows = []
    print("| model | cores | max length | candidates | measured ms | predicted ms |")
    print("|---|---|---|---|---|---|")
    for name, model_dir in models.items():
        for threads in map(int, args.threads.split(",")):
            for length in map(int, args.lengths.split(",")):
                cfg = EngineConfig(model_dir=model_dir, threads=threads, max_length=length)
                eng = ScoringEngine(cfg)
                asyncio.run(eng.warm_up(candidates=20))
                for n in map(int, args.candidates.split(",")):
                    cands = texts[:n]
                    seqs = [(query, None)] if eng.kind is ModelKind.BI_ENCODER else []
                    seqs += [
                        (t, None) if eng.kind is ModelKind.BI_ENCODER else (query, t) for t in cands
                    ]
                    predicted = eng.cost.predict(sum(eng._estimate(s) for s in seqs))
                    took = []
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        asyncio.run(score_cold(eng, query, cands))
                        took.append(time.perf_counter() - t0)
                    row = {
                        "model": name,
                        "cores": threads,
                        "max_length": length,
                        "candidates": n,
                        "measured_ms": 1000 * statistics.median(took),
                        "predicted_ms": 1000 * predicted,
                    }
                    rows.append(row)
                    print(
                        f"| {name} | {threads} | {length} | {n} | {row['measured_ms']:.0f} | "
                        f"{row['predicted_ms']:.0f} |",
                        flush=True,
                    )
                eng.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sizing.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
