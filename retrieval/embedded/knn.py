"""Nearest-neighbour search over the embedded index's stored vectors (hybrid retrieval's
vector part): exact up to ``knn_exact_max`` vectors, through an HNSW index past it.

The vectors of one build that carry the serving tag are read once into a float32 matrix
(``VectorTable.read``). Exact is one matrix-vector product and a partial sort: on one core
0.07 ms for Cranfield's 1,400, 1.3 ms for 10,000, 17 ms for 100,000 (docs/QUALITY.md,
hybrid retrieval; ``python -m profiles.ann``). Past ``knn_exact_max`` (10,000) rows the
table searches a faiss HNSW graph over the same rows instead (``ann.py``: built at index
time and saved with the build, read at a warm start): 0.35 ms at 100,000, recall@20 0.999
against exact. Either way only the table's rows can come back (never a stale vector) and
the cosines returned are exact, computed from the matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tantivy

from retrieval.embedded.ann import AnnConfig, HnswIndex, for_table
from retrieval.vectors import unpack


@dataclass(frozen=True)
class VectorTable:
    """The stored vectors of one build that carry the serving tag, unit length, and where
    each document is: a build never changes once switched in, so its addresses hold for as
    long as the build is served (a hit's fields are then read without a search)."""

    ids: list[str]
    matrix: np.ndarray  # [N, dim] float32, one row per id
    addresses: list[tantivy.DocAddress]
    ann: HnswIndex | None = None  # past the threshold: searched approximately
    ef: int = 0  # the HNSW search's candidates (with ``ann``)

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

    def with_ann(self, build: Path | None, tag: str, config: AnnConfig) -> VectorTable:
        """This table, searched through an HNSW index when it holds more than
        ``config.exact_max`` rows (saved in, or read from, ``build``; ann.py)."""
        return self.with_index(for_table(build, tag, self.ids, self.matrix, config), config.ef)

    def with_index(self, ann: HnswIndex | None, ef: int) -> VectorTable:
        """This table, searched through ``ann`` (None: exactly)."""
        return dataclasses.replace(self, ann=ann, ef=ef)

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(row, cosine) of the ``k`` rows nearest ``vector``, best first."""
        if not len(self) or k <= 0:
            return []
        q = np.asarray(vector, np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        k = min(k, len(self))
        if self.ann is not None:
            rows = np.asarray(self.ann.search(q, k, self.ef), np.int64)
            sims = self.matrix[rows] @ q  # the exact cosines of what the graph found
            order = np.argsort(-sims, kind="stable")
            return [(int(rows[i]), float(sims[i])) for i in order]
        sims = self.matrix @ q
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(i), float(sims[i])) for i in top]
