"""What bench.py's sections share: the Cranfield workload with its BM25 candidates, the
lengths swept, the table printer."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from profiles.workloads import CRANFIELD, Workload
from retrieval.corpus import read_beir_corpus
from retrieval.embedded.index import build_index
from retrieval.embedded.search import EmbeddedBackend
from retrieval.types import Hit, SubQuery

ROOT = Path(__file__).resolve().parents[2]
DATASET = CRANFIELD
OUT = ROOT / "profiles" / "out" / "bench"
LENGTHS = (64, 128, 256)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [
        [f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [
        f"\n## {title}",
        "  ".join(h.ljust(x) for h, x in zip(cells[0], w, strict=True)),
        "  ".join("-" * x for x in w),
    ]
    out += ["  ".join(c.ljust(x) for c, x in zip(r, w, strict=True)) for r in cells[1:]]
    return "\n".join(out)


def load_workload(n_queries: int, index_dir: Path) -> Workload:
    build_index(index_dir, read_beir_corpus(DATASET), progress=False)
    backend = EmbeddedBackend(index_dir)
    rows = [json.loads(x) for x in (DATASET / "queries.jsonl").read_text().splitlines() if x]
    random.Random(0).shuffle(rows)
    queries = [r["text"] for r in rows[:n_queries]]

    async def fetch() -> list[list[Hit]]:
        out = []
        for q in queries:
            (hits,) = await backend.search_chunk([SubQuery.match(q)], 20)
            assert isinstance(hits, list)
            out.append(hits)
        await backend.close()
        return out

    return Workload("cranfield", index_dir, queries, asyncio.run(fetch()))
