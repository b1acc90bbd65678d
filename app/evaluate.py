"""``python -m app eval``: ranking quality on a BEIR-layout dataset, through the same code
path as ``/v1/search`` (``app.search.run_search``), measured with ``ir-measures`` (the
``tools`` extra: ``app/cli.py`` imports this module only for the command)."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ir_measures
import orjson
from ir_measures import RR, R, nDCG
from tqdm import tqdm

from app.config import Config
from app.indexing import engine_embedder
from app.search import SearchParams, SearchResult, run_search
from app.services import Services, open_engine
from rerank.fusion import METHODS
from rerank.ranking import Ranked, rank
from retrieval.corpus import count_lines
from retrieval.errors import CorpusError
from retrieval.factory import eval_index, open_backend, open_indexer
from retrieval.types import Hit

if TYPE_CHECKING:
    from rerank.engine import ScoringEngine

SYSTEMS = ("retrieval", "model", "fused")


@dataclass(frozen=True)
class Query:
    qid: str
    text: str


def read_queries(dataset: Path) -> list[Query]:
    path = dataset / "queries.jsonl"
    if not path.is_file():
        raise CorpusError(f"no queries.jsonl in {dataset}")
    rows = (orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    return [Query(str(r["_id"]), str(r["text"])) for r in rows]


def read_qrels(dataset: Path, split: str = "test") -> list[ir_measures.Qrel]:
    path = dataset / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise CorpusError(f"no qrels/{split}.tsv in {dataset}")
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].lstrip("-").isdigit():  # skips the header
            out.append(ir_measures.Qrel(parts[0], parts[1], int(parts[2])))
    return out


async def ensure_indexed(
    cfg: Config, dataset: Path, progress: bool, vectors_by: ScoringEngine | None = None
) -> Config:
    """Index the dataset's corpus into the configured backend unless it already is there;
    returns the config pointing at that index. ``vectors_by``: with this engine's
    index-time vectors, as ``app index`` stores them (hybrid retrieval needs them; without,
    documents are encoded at query time)."""
    corpus = dataset / "corpus.jsonl"
    total = await asyncio.to_thread(count_lines, corpus)
    vectors = None
    if vectors_by is not None:
        vectors = await asyncio.to_thread(engine_embedder, cfg, vectors_by)
    embed_fn, tag, dims = vectors or (None, "", None)
    # Never reload the serving index by accident: eval gets its own unless the user names
    # one (--es-index, --index-dir).
    rcfg = await asyncio.to_thread(
        eval_index, cfg.retrieval, cfg.data_dir, dataset, embed_fn is not None
    )
    await open_indexer(rcfg).load_once(
        corpus, total, embed=embed_fn, tag=tag, dims=dims, progress=progress
    )
    return dataclasses.replace(cfg, retrieval=rcfg)


def _as_run(qid: str, ranked: Sequence[Ranked[Hit]]) -> Iterable[ir_measures.ScoredDoc]:
    n = len(ranked)
    return (
        ir_measures.ScoredDoc(qid, r.candidate.doc_id, float(n - i)) for i, r in enumerate(ranked)
    )


def system_rankings(res: SearchResult, cfg: Config) -> dict[str, list[Ranked[Hit]]]:
    """Retrieval alone, model alone over the reranked candidates, and the fused ranking;
    all three over the same retrieved set, so recall is comparable."""
    union = res.union
    ranking = cfg.ranking
    scores = res.scoring.model_scores
    return {
        "retrieval": rank(union, {}, "model"),  # nothing scored: retrieval order
        "model": rank(union, scores, "model"),
        "fused": res.ranked,
        **{
            f"fusion:{m}": rank(union, scores, m, ranking.fusion_weight, ranking.rrf_k)
            for m in METHODS
        },
        **{
            f"fusion:{m}@{w}": rank(union, scores, m, w, ranking.rrf_k)
            for m in ("linear", "minmax", "rrf")
            for w in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
        },
    }


async def evaluate(
    cfg: Config,
    dataset: Path,
    *,
    limit: int | None = None,
    budget_ms: float | None = None,
    progress: bool = True,
    per_query: bool = False,
    vectors: bool = False,
    knn_only: bool = False,
) -> dict[str, Any]:
    """``vectors``: score with index-time vectors (implied by ``--hybrid``); ``knn_only``:
    retrieve with the query's vector alone (``match_query`` false, hybrid on)."""
    if knn_only:
        cfg = cfg.override(hybrid=True)
    qrels = read_qrels(dataset)
    judged = {q.query_id for q in qrels}
    queries = [q for q in read_queries(dataset) if q.qid in judged][:limit]
    # Average over the queries we ran: a judged query left out must not count as a zero.
    asked = {q.qid for q in queries}
    qrels = [q for q in qrels if q.query_id in asked]
    engine = await asyncio.to_thread(open_engine, cfg)
    vectors_by = engine if vectors or cfg.retrieval.hybrid else None
    try:
        cfg = await ensure_indexed(cfg, dataset, progress, vectors_by)
    except BaseException:
        await engine.aclose()
        raise
    tag = await asyncio.to_thread(engine.vector_tag, cfg.ranking.doc_fields)
    svc = Services(cfg, engine, open_backend(cfg.retrieval_config(), tag))
    runs: dict[str, list[ir_measures.ScoredDoc]] = {}
    latencies: list[float] = []
    try:
        for q in tqdm(queries, unit="query", desc="eval", disable=not progress):
            params = SearchParams(
                q.text,
                candidates=cfg.request.candidates,
                retrieve=max(cfg.retrieval.retrieve, cfg.request.candidates),
                budget_ms=budget_ms,
                # As served with a budget; without one nothing is cut, retrieval included.
                retrieval_ms=None if budget_ms is None else cfg.retrieval.retrieval_timeout_ms,
                fusion=cfg.ranking.fusion,
                fusion_weight=cfg.ranking.fusion_weight,
                match_query=not knn_only,
                hybrid=cfg.retrieval.hybrid,
            )
            t0 = time.perf_counter()
            res = await run_search(svc, params)
            latencies.append(time.perf_counter() - t0)
            for name, ranked in system_rankings(res, cfg).items():
                runs.setdefault(name, []).extend(_as_run(q.qid, ranked))
    finally:
        await svc.close()
    n = cfg.request.candidates
    measures = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, f"recall@{n}": R @ n}
    report: dict[str, Any] = {}
    for name, run in runs.items():
        agg = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
        scores = {k: round(float(agg[m]), 4) for k, m in measures.items()}
        if name in SYSTEMS:
            report[name] = scores
        else:
            report.setdefault("variants", {})[name.removeprefix("fusion:")] = scores
    if per_query:
        table: dict[str, dict[str, float]] = {}
        for name in SYSTEMS:
            for m in ir_measures.iter_calc([nDCG @ 10], qrels, runs.get(name, [])):
                table.setdefault(m.query_id, {})[name] = round(float(m.value), 4)
        report["per_query"] = table
    lat = sorted(latencies)
    report["queries"] = len(queries)
    report["latency_ms"] = {
        "median": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p95": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1) if lat else None,
    }
    report["config"] = {
        "backend": svc.backend.name,
        "model": str(cfg.resolved_model_dir),
        "candidates": n,
        "retrieve": max(cfg.retrieval.retrieve, n),
        "fusion": cfg.ranking.fusion,
        "fusion_weight": cfg.ranking.fusion_weight,
        "rrf_k": cfg.ranking.rrf_k,
        "max_length": cfg.engine.max_length,
        "doc_fields": cfg.ranking.doc_fields,
        "passages": cfg.engine.passages,
        "query_prep": cfg.ranking.query_prep,
        "budget_ms": budget_ms,
        "retrieval": "knn" if knn_only else "hybrid" if cfg.retrieval.hybrid else "lexical",
        "knn_k": cfg.retrieval.knn_k,
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    keys = list(report["fused"])
    rows = [("system", *keys)]
    rows += [(name, *(f"{report[name][k]:.4f}" for k in keys)) for name in SYSTEMS]
    rows += [
        (f"  {name}", *(f"{v[k]:.4f}" for k in keys))
        for name, v in report.get("variants", {}).items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if "per_query" in report:
        lines += ["", "query  " + "  ".join(f"{s:>9}" for s in SYSTEMS)]
        for qid, vals in report["per_query"].items():
            lines.append(f"{qid:<6} " + "  ".join(f"{vals.get(s, 0.0):9.4f}" for s in SYSTEMS))
    return "\n".join(lines)
