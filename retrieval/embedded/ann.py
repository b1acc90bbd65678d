"""The approximate index over a large build's stored vectors: a faiss HNSW graph (M 32,
efConstruction 128) over float16 copies of the unit vectors, by inner product (cosine),
chosen by measurement (docs/QUALITY.md, hybrid retrieval; ``python -m profiles.ann``): on
100,000 real embeddings, recall@20 0.999 against exact at 0.35 ms a search on one core,
where exact takes 17 ms. float16 is what the index stores anyway (retrieval/vectors.py):
half the memory of float32, the same recall; the cosines a search returns are recomputed
from the table's float32 rows.

Built by ``app index``/``app embed`` for the vectors it tags, from the finished build
exactly as a search reads it (``VectorTable.read``), and saved in the build's directory
before the switch, so a served build has it and a warm start only reads it. The file is
named by a digest of the tag and carries the ids it holds, their order and the build
parameters in a JSON sidecar: a table that differs in any of them (another model's tag, an
index built before this file existed) gets an index built in memory instead, on a thread of
its own while exact answers (``EmbeddedBackend``), saved beside the build when the
directory allows.

faiss runs on one thread: its OpenMP thread count is per thread, so it is set to 1 on the
thread that builds or searches, every time (a search of one vector never starts an OpenMP
region anyway; a build would start one per core, fighting ONNX Runtime's threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import faiss

M = 32  # graph degree (profiles/ann.py: M 16 recalled less at ef 32-128, for 8% less memory)
EF_CONSTRUCTION = 128  # candidates kept while inserting: graph quality against build time


@dataclass(frozen=True)
class AnnConfig:
    """When and how the approximate index answers (``RetrievalConfig``'s knn_exact_max and
    knn_ef, where their defaults are)."""

    exact_max: int  # up to this many vectors exact kNN answers; past it the HNSW index
    ef: int  # candidates a search keeps (>= k): recall against latency


class HnswIndex:
    """An HNSW graph over the rows of one ``VectorTable`` (labels are row numbers)."""

    def __init__(self, index: faiss.IndexHNSW) -> None:
        self._index, self._hnsw = index, index.hnsw

    @classmethod
    def build(cls, matrix: np.ndarray) -> HnswIndex:
        import faiss

        faiss.omp_set_num_threads(1)
        index = faiss.IndexHNSWSQ(
            matrix.shape[1],
            faiss.ScalarQuantizer.QT_fp16,  # type: ignore[arg-type]  # the stub wants a class
            M,
            faiss.METRIC_INNER_PRODUCT,
        )
        index.hnsw.efConstruction = EF_CONSTRUCTION
        rows = np.ascontiguousarray(matrix, np.float32)
        index.train(rows)  # float16 needs no training; faiss requires the call
        index.add(rows)  # one thread, one insertion order (the rows'): the same graph each time
        return cls(index)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, vector: np.ndarray, k: int, ef: int) -> list[int]:
        """Rows of (about) the ``k`` nearest, best first."""
        import faiss

        faiss.omp_set_num_threads(1)
        self._hnsw.efSearch = max(ef, k)  # searches run one at a time (the executor's)
        q = np.ascontiguousarray(vector, np.float32).reshape(1, -1)
        _, labels = self._index.search(q, k)
        return [int(i) for i in labels[0] if i >= 0]

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path) -> HnswIndex:
        import faiss

        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexHNSW):
            raise ValueError(f"{path}: not an HNSW index")
        return cls(index)


def _key(tag: str) -> str:
    return hashlib.blake2b(tag.encode(), digest_size=8).hexdigest()


def _meta(tag: str, ids: list[str]) -> dict[str, Any]:
    digest = hashlib.blake2b(digest_size=16)
    for i in ids:
        digest.update(i.encode() + b"\0")
    return {
        "tag": tag,
        "rows": len(ids),
        "ids": digest.hexdigest(),
        "m": M,
        "ef_construction": EF_CONSTRUCTION,
    }


def paths(build: Path, tag: str) -> tuple[Path, Path]:
    """(index file, its JSON sidecar) for vectors tagged ``tag`` in ``build``."""
    stem = build / f"knn-{_key(tag)}"
    return stem.with_suffix(".faiss"), stem.with_suffix(".json")


def save(build: Path, tag: str, ids: list[str], index: HnswIndex) -> None:
    """Written beside the build: file, then sidecar, each renamed into place (a reader
    finds both or no sidecar, and without a sidecar the file is not trusted)."""
    file, sidecar = paths(build, tag)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # replicas sharing the directory
    try:
        index.save(tmp)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_meta(tag, ids)))
    os.replace(tmp, sidecar)


def load(build: Path, tag: str, ids: list[str]) -> HnswIndex | None:
    """The saved index for exactly these rows (tag, ids, order, parameters), else None."""
    file, sidecar = paths(build, tag)
    try:
        if json.loads(sidecar.read_text()) != _meta(tag, ids):
            return None
        index = HnswIndex.load(file)
    except (OSError, ValueError, RuntimeError):  # missing, unreadable, corrupt
        return None
    return index if len(index) == len(ids) else None


def load_saved(build: Path | None, tag: str, ids: list[str]) -> HnswIndex | None:
    """:func:`load`, for a build that may have no directory of its own (None)."""
    return None if build is None else load(build, tag, ids)


def for_table(
    build: Path | None, tag: str, ids: list[str], matrix: np.ndarray, config: AnnConfig
) -> HnswIndex | None:
    """The approximate index a table of these rows should search with: None at or below
    ``exact_max`` rows (exact answers); the saved one when it matches; else built now and
    saved when ``build`` is writable."""
    if len(ids) <= config.exact_max:
        return None
    if (saved := load_saved(build, tag, ids)) is not None:
        return saved
    index = HnswIndex.build(matrix)
    if build is not None:
        # Read-only, full, or the build was just replaced (faiss raises RuntimeError).
        with contextlib.suppress(OSError, RuntimeError):
            save(build, tag, ids, index)
    return index


__all__ = [
    "EF_CONSTRUCTION",
    "AnnConfig",
    "HnswIndex",
    "M",
    "for_table",
    "load",
    "load_saved",
    "paths",
    "save",
]
