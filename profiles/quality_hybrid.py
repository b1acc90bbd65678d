"""The hybrid-retrieval part of the quality sweep (``profiles/quality.py``): BM25 alone, the
query's vector alone (kNN) and both, each with Recall@20, NDCG@10 (BM25 order, model alone,
fused) and latency, on the embedded index and, given ``--es-url``, through Elasticsearch
(noida-db here). Every variant scores with index-time vectors, so the model's scores are
the same in all three and only the candidates differ.

Writes the table between the ``hybrid`` markers of docs/QUALITY.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Config
from app.evaluate import evaluate

START, END = "<!-- hybrid:start -->", "<!-- hybrid:end -->"

# name -> (config changes, evaluate() options)
RETRIEVAL: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "BM25 only": ({}, {"vectors": True}),
    "kNN only": ({}, {"knn_only": True}),
    "BM25 + kNN (hybrid)": ({"hybrid": True}, {}),
}


async def run(
    base: Config, dataset: Path, limit: int | None, es_url: str | None
) -> dict[str, dict[str, Any]]:
    backends = {"embedded": base}
    if es_url:
        backends["elasticsearch"] = base.override(es_url=es_url)
    out: dict[str, dict[str, Any]] = {}
    for backend, cfg in backends.items():
        for name, (change, options) in RETRIEVAL.items():
            print(f"== hybrid: {backend}, {name}", flush=True)
            got = await evaluate(
                cfg.override(**change), dataset, limit=limit, progress=True, **options
            )
            out[f"{backend} / {name}"] = got
    return out


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| backend / retrieval | scored (max) | Recall@20 fused | BM25-order NDCG@10 "
        "| model NDCG@10 | fused NDCG@10 | fused − model | median ms/query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        n = r["config"]["candidates"]
        scored = n + (r["config"]["knn_k"] if r["config"]["retrieval"] == "hybrid" else 0)
        if r["config"]["retrieval"] == "knn":
            scored = r["config"]["knn_k"]
        f, m = r["fused"], r["model"]
        lines.append(
            f"| {name} | {scored} | {f[f'recall@{n}']:.4f} | {r['retrieval']['ndcg@10']:.4f} | "
            f"{m['ndcg@10']:.4f} | {f['ndcg@10']:.4f} | {f['ndcg@10'] - m['ndcg@10']:+.4f} | "
            f"{r['latency_ms']['median']} |"
        )
    lines += ["", *_sweep(results)]
    return "\n".join(lines)


def _sweep(results: dict[str, dict[str, Any]]) -> list[str]:
    """NDCG@10 of each fusion method at each model weight, same model scores, for the
    variants that fuse (kNN alone has no lexical score to fuse)."""
    runs = {k: r for k, r in results.items() if r["config"]["retrieval"] != "knn"}
    weights = sorted(
        {k.split("@")[1] for r in runs.values() for k in r.get("variants", {}) if "@" in k}
    )
    if not runs or not weights:
        return []
    out = [
        "Fusion methods by model weight (NDCG@10; `linear` is the default, weight 0.5):",
        "",
        "| backend / retrieval | method | model alone | " + " | ".join(f"w={w}" for w in weights),
        "|---|---|---|" + "---|" * len(weights),
    ]
    for name, r in runs.items():
        v = r["variants"]
        for m in ("linear", "minmax", "rrf"):
            cells = [f"{v[f'{m}@{w}']['ndcg@10']:.4f}" for w in weights if f"{m}@{w}" in v]
            if cells:
                model = r["model"]["ndcg@10"]
                out.append(f"| {name} | {m} | {model:.4f} | " + " | ".join(cells) + " |")
    return out


def write_doc(doc: Path, table: str) -> None:
    if doc.is_file() and START in (text := doc.read_text()):
        head, rest = text.split(START, 1)
        doc.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")
