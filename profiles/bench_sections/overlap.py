"""bench.py section ``overlap``: the Elasticsearch stand-in delaying ``_msearch``: total vs
max(ES, scoring) and their sum; sequential sub-queries vs dedup + concurrent chunks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from typing import Any

from app.config import Config
from profiles.bench_sections.common import DATASET, Workload
from rerank.engine import ScoringEngine
from retrieval.corpus import read_beir_corpus
from retrieval.types import SubQuery


def bench_overlap(cfg: Config, wl: Workload) -> dict[str, Any]:
    from aiohttp.test_utils import TestServer

    from app.search import SearchParams, run_search
    from app.services import Services
    from retrieval.elastic.search import ElasticBackend, make_client
    from retrieval.fanout import RetrievalRun
    from tests.es_standin import StandIn

    async def main() -> dict[str, Any]:
        standin = StandIn()
        docs = {d.doc_id: {"title": d.title, "text": d.text} for d in read_beir_corpus(DATASET)}
        standin.docs["cranfield"] = docs
        server = TestServer(standin.app(), host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        backend = ElasticBackend(make_client(url), "cranfield")
        # No cache: every run scores its candidates for real.
        engine = ScoringEngine(dataclasses.replace(cfg.engine_config(), cache_mb=0))
        c = cfg.override(chunks=4)
        svc = Services(c, engine, backend)
        q = wl.queries[0]
        subs = [SubQuery.match(x) for x in wl.queries[1:4]]
        params = SearchParams(q, subqueries=subs, candidates=20, retrieve=20)

        async def timed(delay_s: float, per_chunk: bool = True) -> float:
            order = {json.dumps(s.text): i for i, s in enumerate([SubQuery.match(q), *subs])}

            def delay(bodies: list[dict[str, Any]]) -> float:
                if not per_chunk:
                    return delay_s
                idx = [
                    order.get(json.dumps(b["query"].get("multi_match", {}).get("query")), 0)
                    for b in bodies
                ]
                return delay_s * (max(idx) + 1) / len(order)

            standin.delay = delay
            t0 = time.perf_counter()
            res = await run_search(svc, params)
            assert len(res.scoring.model_scores) == 20
            return time.perf_counter() - t0

        await timed(0.0)
        scoring_only = statistics.median([await timed(0.0) for _ in range(3)])
        rows = []
        for es_ms in (50, 100, 200, 400):
            total = statistics.median([await timed(es_ms / 1000) for _ in range(3)])
            rows.append(
                {
                    "es_ms": es_ms,
                    "scoring_ms": round(scoring_only * 1000, 1),
                    "total_ms": round(total * 1000, 1),
                    "max_ms": round(max(es_ms, scoring_only * 1000), 1),
                    "sum_ms": round(es_ms + scoring_only * 1000, 1),
                    "total_over_max": round(total * 1000 / max(es_ms, scoring_only * 1000), 3),
                }
            )
        # Dedup + chunking: 50 sub-queries (20 unique), each _msearch costs 5 ms + 1 ms/query.
        standin.delay = lambda bodies: 0.005 + 0.001 * len(bodies)
        pool = [SubQuery.match(x) for x in wl.queries[:20]]
        fifty = [pool[i % 20] for i in range(50)]
        t0 = time.perf_counter()
        for s in fifty:  # the Flask way: one query after another
            await backend.search_chunk([s], 20)
        sequential = time.perf_counter() - t0
        chunked = {}
        for n in (1, 2, 4, 8):
            t0 = time.perf_counter()
            run = RetrievalRun(backend, fifty, k=20, n_chunks=n)
            _ = [x async for x in run.stream()]
            chunked[str(n)] = round((time.perf_counter() - t0) * 1000, 1)
        await backend.close()
        engine.close()
        await server.close()
        return {
            "overlap": rows,
            "dedup_chunking": {
                "subqueries": 50,
                "unique": 20,
                "sequential_ms": round(sequential * 1000, 1),
                "dedup_chunks_ms": chunked,
            },
        }

    return asyncio.run(main())
