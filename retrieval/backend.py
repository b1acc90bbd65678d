"""What the rest of the service needs from a retrieval backend: searching (``Backend``) and
loading documents (``Indexer``). ``retrieval/factory.py`` picks one from the configuration."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.types import Depth, Document, Hit, SubQuery
from retrieval.vectors import Embedder, EmbedReport


class Backend(Protocol):
    name: str

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: Depth, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        """One round trip for a chunk; a per-query failure comes back in its slot,
        a whole-chunk failure is raised. ``k``: the hits wanted, for every query or per
        query. ``deadline`` (a ``time.monotonic()`` instant) bounds how long the backend
        may be waited on."""
        ...

    async def search_knn(
        self, vector: np.ndarray, k: int, deadline: float | None = None
    ) -> list[Hit]:
        """The ``k`` documents whose stored vectors (carrying the serving tag) are nearest
        ``vector`` by cosine, best first, each with its vector and the cosine as ``score``.
        Raises ``KnnUnavailable`` when the index has no such vectors."""
        ...

    async def check_knn(self) -> None:
        """Start-up check for hybrid retrieval: raises ``KnnUnavailable`` when
        :meth:`search_knn` cannot answer (``BackendUnavailable`` when not askable now)."""
        ...

    def queue_age(self) -> float:
        """Seconds the oldest search waiting for this process's own search thread has
        waited (0 when none waits, or when the searching is remote: a cluster's queue is
        its own). Admission sheds on it."""
        ...

    async def ping(self) -> bool: ...

    async def num_docs(self) -> int | None:
        """Documents in the index (0 when it is missing; None when unknown): an index with
        none is not ready to serve."""
        ...

    async def check(self) -> None:
        """Start-up check that the index can serve what the service is configured to read
        (raises ``IndexMismatch``; ``BackendUnavailable`` when it cannot be asked now)."""
        ...

    async def close(self) -> None: ...


class Indexer(Protocol):
    """(Re)builds an index from documents, optionally with index-time vectors."""

    @property
    def where(self) -> str:
        """Names the index, for messages."""
        ...

    async def index(
        self,
        docs: Iterable[Document],
        total: int | None,
        *,
        embed: Embedder | None = None,
        tag: str = "",
        dims: int | None = None,
        progress: bool = True,
    ) -> int:
        """Replaces the index's contents; returns how many documents were indexed."""
        ...

    async def load_once(
        self,
        corpus: Path,
        total: int,
        *,
        embed: Embedder | None = None,
        tag: str = "",
        dims: int | None = None,
        progress: bool = True,
    ) -> None:
        """Loads a BEIR corpus file of ``total`` documents (with vectors by ``embed``)
        unless the index already holds it (``app eval``'s datasets)."""
        ...

    async def embed(
        self, embed: Embedder, tag: str, dims: int, *, batch: int, max_batches: int | None
    ) -> EmbedReport:
        """Adds vectors tagged ``tag`` to the documents not carrying them, in place as far
        as a search can tell (``app embed``; ``batch`` documents per page, at most
        ``max_batches`` pages where the backend pages)."""
        ...


__all__ = ["Backend", "Indexer"]
