"""Index-time document embeddings: stored with each document so a search encodes only
the query.

Vectors are stored as float16 (half the bytes of float32, cosine error ~1e-3, well below
what changes a ranking) next to a *tag* naming everything that produced them: the model,
precision, max length and document-fields mode (the engine's part,
``ScoringEngine.vector_tag``) and the source fields the text was read from
(``stored_tag``). A search uses a stored vector only when its tag equals the one the
serving configuration would write, so a change of model or of ``--es-text-field`` never
mixes in stale vectors: those documents are embedded at query time (and cached) until
``python -m app embed`` re-embeds them.
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


def stored_tag(engine_tag: str, fields: tuple[str, str]) -> str:
    """The tag stored with (and required of) a vector: the engine's tag plus the (title,
    text) fields it was read from. ``|`` and ``=`` cannot clash: the engine's tag has
    neither, and both field names are spelled out in order."""
    title, text = fields
    return f"{engine_tag}|title={title}|text={text}"


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


__all__ = [
    "BATCH",
    "EmbedReport",
    "Embedder",
    "chunked",
    "from_b64",
    "pack",
    "stored_tag",
    "to_b64",
    "unpack",
]
