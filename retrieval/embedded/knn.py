"""Exact nearest-neighbour search over the embedded index's stored vectors (hybrid
retrieval's vector part).

Exact, not approximate: the vectors of one build are read once into a float32 matrix and a
search is one matrix-vector product and a partial sort. At 384 dimensions that is 1.5 KB
per document and, on the machine of docs/BENCHMARKS.md, well under a millisecond per 10,000
documents; an approximate index (HNSW) earns its keep only far beyond the embedded index's
size (docs/QUALITY.md, hybrid retrieval).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import tantivy

from retrieval.vectors import unpack


@dataclass(frozen=True)
class VectorTable:
    """The stored vectors of one build that carry the serving tag, unit length, and where
    each document is: a build never changes once switched in, so its addresses hold for as
    long as the build is served (a hit's fields are then read without a search)."""

    ids: list[str]
    matrix: np.ndarray  # [N, dim] float32, one row per id
    addresses: list[tantivy.DocAddress]

    @classmethod
    def read(cls, searcher: tantivy.Searcher, tag: str) -> VectorTable:
        """Every document's vector carrying ``tag`` (others are stale: left out)."""
        n = int(searcher.num_docs)
        ids: list[str] = []
        rows: list[np.ndarray] = []
        addresses: list[tantivy.DocAddress] = []
        if n:
            for _, addr in searcher.search(tantivy.Query.all_query(), n).hits:
                doc = searcher.doc(addr)
                raw = doc.get_first("vec")
                if not raw or doc.get_first("vec_tag") != tag:
                    continue
                with contextlib.suppress(ValueError):  # corrupt: left out, as in a search
                    rows.append(unpack(raw))
                    ids.append(doc["doc_id"][0])
                    addresses.append(addr)
        if not rows:
            return cls([], np.zeros((0, 0), np.float32), [])
        matrix = np.stack(rows)
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return cls(ids, matrix, addresses)

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(row, cosine) of the ``k`` rows nearest ``vector``, best first."""
        if not len(self) or k <= 0:
            return []
        q = np.asarray(vector, np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        sims = self.matrix @ q
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(i), float(sims[i])) for i in top]
