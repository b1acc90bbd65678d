"""Quality sweep on a BEIR dataset (default: Cranfield from ../shared): every text-handling
and candidate-count choice measured through the eval command's code path, in one run.

    .venv/bin/python profiles/quality.py [--dataset DIR] [--limit N]

Writes profiles/out/quality.json, docs/quality_curve.png, and the generated tables of
docs/QUALITY.md (between its `generated` markers). No figure is typed in by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Config, from_sources  # noqa: E402
from app.evaluate import evaluate  # noqa: E402
from profiles import quality_hybrid  # noqa: E402
from rerank.cold import score_cold  # noqa: E402

DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "cranfield"
START, END = "<!-- generated:start -->", "<!-- generated:end -->"

# name -> config changes against the defaults
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "fp32 (exact weights)": {"precision": "fp32"},
    "rerank 10": {"candidates": 10},
    "rerank 50": {"candidates": 50},
    "best passage": {"passages": "best"},
    "text only (no title)": {"doc_fields": "text"},
    "query cleaned": {"query_prep": "clean"},
    "max_length 128, first passage": {"max_length": 128},
    "max_length 128, best passage": {"max_length": 128, "passages": "best"},
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _row(name: str, r: dict[str, Any], n_key: str) -> str:
    f, lat = r["fused"], r["latency_ms"]
    return (
        f"| {name} | {r['config']['candidates']} | {r['retrieval']['ndcg@10']:.4f} | "
        f"{r['model']['ndcg@10']:.4f} | {f['ndcg@10']:.4f} | {f['mrr@10']:.4f} | "
        f"{f[n_key]:.4f} | {lat['median']} |"
    )


def render(results: dict[str, dict[str, Any]], cmd: str, dataset: Path) -> str:
    lines = [
        f"Command: `{cmd}` — dataset `{dataset.name}`, "
        f"{next(iter(results.values())).get('queries')} queries, machine: {machine()}.",
        "",
    ]
    lines += [
        "| variant | reranked | BM25 NDCG@10 | model NDCG@10 | fused NDCG@10 | fused MRR@10 "
        "| fused Recall@reranked | median ms/query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name == "precision_agreement":
            continue
        n_key = next(k for k in r["fused"] if k.startswith("recall@"))
        lines.append(_row(name, r, n_key))
    d = results.get("default", {})
    lines += [
        "",
        "Fusion methods on the default run (same model scores, NDCG@10 / MRR@10):",
        "",
        "| fusion | NDCG@10 | MRR@10 |",
        "|---|---|---|",
    ]
    for name, v in d.get("variants", {}).items():
        lines.append(f"| {name} | {v['ndcg@10']:.4f} | {v['mrr@10']:.4f} |")
    agree = results.get("precision_agreement")
    if agree:
        lines += [
            "",
            f"int8 against fp32 on the same {agree['pairs']} query–candidate pairs "
            f"({agree['queries']} queries): Spearman pooled **{agree['spearman_pooled']}**, "
            f"per query mean {agree['spearman_per_query_mean']} (min "
            f"{agree['spearman_per_query_min']}), max |score diff| {agree['max_abs_diff']}.",
        ]
    lines += ["", "![NDCG@10 against candidates reranked](quality_curve.png)"]
    return "\n".join(lines)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


async def precision_agreement(cfg: Config, dataset: Path, limit: int | None) -> dict[str, Any]:
    """int8 against fp32 scores on the same query-candidate pairs (BM25 top candidates)."""
    from rerank.engine import ScoringEngine
    from rerank.text import doc_text
    from retrieval.corpus import read_beir_corpus
    from retrieval.embedded.index import build_index
    from retrieval.embedded.search import EmbeddedBackend
    from retrieval.types import SubQuery

    index = ROOT / "profiles" / "out" / "agreement-index"
    build_index(index, read_beir_corpus(dataset), progress=False)
    backend = EmbeddedBackend(index)
    rows = [json.loads(x) for x in (dataset / "queries.jsonl").read_text().splitlines() if x]
    engines = {
        p: ScoringEngine(dataclasses.replace(cfg.engine_config(), precision=p))
        for p in ("fp32", "int8")
    }
    per_query, all32, all8 = [], [], []
    for r in rows[:limit]:
        (hits,) = await backend.search_chunk([SubQuery.match(r["text"])], cfg.request.candidates)
        assert isinstance(hits, list)
        if len(hits) < 3:
            continue
        texts = [doc_text(h, cfg.ranking.doc_fields) for h in hits]
        s32 = (await score_cold(engines["fp32"], r["text"], texts)).scores
        s8 = (await score_cold(engines["int8"], r["text"], texts)).scores
        per_query.append(spearman(s32, s8))
        all32.append(s32)
        all8.append(s8)
    for e in engines.values():
        await e.aclose()
    await backend.close()
    a32, a8 = np.concatenate(all32), np.concatenate(all8)
    return {
        "queries": len(per_query),
        "pairs": len(a32),
        "spearman_pooled": round(spearman(a32, a8), 4),
        "spearman_per_query_mean": round(float(np.mean(per_query)), 4),
        "spearman_per_query_min": round(float(np.min(per_query)), 4),
        "max_abs_diff": round(float(np.max(np.abs(a32 - a8))), 4),
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(
        (
            r["config"]["candidates"],
            r["fused"]["ndcg@10"],
            r["model"]["ndcg@10"],
            r["retrieval"]["ndcg@10"],
            r["latency_ms"]["median"],
        )
        for name, r in results.items()
        if name in ("default", "rerank 10", "rerank 50")
    )
    n = [p[0] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [p[1] for p in pts], "o-", label="fused")
    ax.plot(n, [p[2] for p in pts], "s--", label="model alone")
    ax.plot(n, [p[3] for p in pts], "^:", label="BM25 alone")
    ax.set_xlabel("candidates reranked")
    ax.set_ylabel("NDCG@10")
    ax2 = ax.twinx()
    ax2.bar(n, [p[4] for p in pts], width=3, alpha=0.2, color="grey", label="median ms/query")
    ax2.set_ylabel("median latency, ms (full scoring)")
    ax.legend(loc="lower right")
    ax.set_title("Quality vs candidates reranked")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run")
    ap.add_argument(
        "--hybrid", action="store_true", help="only the hybrid-retrieval section (quality_hybrid)"
    )
    ap.add_argument("--es-url", default=None, help="also run the hybrid section through this ES")
    args = ap.parse_args()
    if not (args.dataset / "corpus.jsonl").is_file():
        print(f"dataset not found at {args.dataset}: skipping (../shared absent?)")
        return 0
    base: Config = from_sources(None)
    out = ROOT / "profiles" / "out"
    out.mkdir(parents=True, exist_ok=True)
    if args.hybrid:
        hybrid = await quality_hybrid.run(base, args.dataset, args.limit, args.es_url)
        (out / "quality_hybrid.json").write_text(json.dumps(hybrid, indent=2))
        table = quality_hybrid.render(hybrid)
        print(table)
        quality_hybrid.write_doc(ROOT / "docs" / "QUALITY.md", table)
        return 0
    results: dict[str, dict[str, Any]] = {}
    for name, change in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        cfg = base.override(**change)
        results[name] = await evaluate(cfg, args.dataset, limit=args.limit, progress=True)
        print(json.dumps({k: results[name][k] for k in ("retrieval", "model", "fused")}))
    if not args.only or "precision_agreement" in args.only:
        print("== precision agreement", flush=True)
        results["precision_agreement"] = await precision_agreement(base, args.dataset, args.limit)
        print(results["precision_agreement"])
    (out / "quality.json").write_text(json.dumps(results, indent=2))
    cmd = "python profiles/quality.py" + (f" --limit {args.limit}" if args.limit else "")
    table = render(results, cmd, args.dataset)
    print(table)
    if "default" in results and "rerank 10" in results and "rerank 50" in results:
        plot(results, ROOT / "docs" / "quality_curve.png")
    doc = ROOT / "docs" / "QUALITY.md"
    if doc.is_file() and START in (text := doc.read_text()):
        head, rest = text.split(START, 1)
        doc.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
