"""Index-time document embeddings: stored with each document so a search encodes only
the query.

Vectors are stored as float16 (half the bytes of float32, cosine error ~1e-3, well below
what changes a ranking) next to a *tag* naming the model, precision, max length and
document fields that produced them. A search uses a stored vector only when its tag
matches the serving engine's, so a model change never mixes incompatible vectors: those
documents are simply embedded at query time (and cached) until the index is rebuilt.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from retrieval.types import Document

Embedder = Callable[[Sequence[Document]], np.ndarray]  # [N, dim] float32
BATCH = 64  # documents per embedding call at index time
T = TypeVar("T")


@dataclass
class EmbedReport:
    """What ``python -m app embed`` did: documents given vectors, documents that already had
    this engine's, documents whose update failed, and the time it took."""

    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"embedded {self.embedded}, skipped {self.skipped} (already tagged), "
            f"failed {self.failed}, in {self.seconds:.1f}s"
        )


def pack(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f2").tobytes()


def unpack(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def to_b64(vec: np.ndarray) -> str:
    return base64.b64encode(pack(vec)).decode("ascii")


def from_b64(text: str) -> np.ndarray:
    return unpack(base64.b64decode(text, validate=True))


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``itertools.batched`` (Python 3.12) for 3.11."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


__all__ = ["BATCH", "EmbedReport", "Embedder", "chunked", "from_b64", "pack", "to_b64", "unpack"]
