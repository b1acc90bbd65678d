"""Model outputs kept between requests: document embeddings (bi-encoders) and
query–document scores (cross-encoders).

A popular document is embedded once, not once per search. Entries are keyed by the
document id *and* a digest of the exact text the model saw, so an edited document misses
and its stale vector is dropped at once. The cache is an LRU bounded by bytes, not entries:
a long document split into passages holds one vector per passage.

A cross-encoder has no per-document output to keep, but head queries repeat: the
:class:`PairCache` keeps each (query, document) score, keyed by what decides it — the
model's tag, the prepared query text and a digest of the document's text — under the
same policy (LRU, bounded in bytes).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

Key = tuple[str, bytes]
_OVERHEAD = 200  # bytes per entry beyond the array data: key, node, array header


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


Evicted = Callable[[int], None]  # told how many entries were dropped for room


def _ignore(count: int) -> None:
    pass


class EmbeddingCache:
    def __init__(self, max_bytes: int, on_evict: Evicted = _ignore) -> None:
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._data: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._current: dict[str, bytes] = {}  # doc id -> digest of its latest text
        self.bytes = 0
        self.evictions = 0  # entries dropped for room (not for staleness)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, doc_id: str, text: str) -> np.ndarray | None:
        key = (doc_id, digest(text))
        vecs = self._data.get(key)
        if vecs is None:
            old = self._current.get(doc_id) if doc_id else None
            if old is not None and old != key[1]:  # edited since cached: the old vector is stale
                self._remove((doc_id, old))
            return None
        self._data.move_to_end(key)
        return vecs

    def put(self, doc_id: str, text: str, vecs: np.ndarray) -> None:
        if self.max_bytes <= 0:
            return
        key = (doc_id, digest(text))
        self._remove(key)
        old = self._current.get(doc_id) if doc_id else None
        if old is not None and old != key[1]:  # the document changed: forget the old text
            self._remove((doc_id, old))
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        vecs.setflags(write=False)
        size = vecs.nbytes + _OVERHEAD
        if size > self.max_bytes:
            return
        self._data[key] = vecs
        self.bytes += size
        if doc_id:
            self._current[doc_id] = key[1]
        dropped = 0
        while self.bytes > self.max_bytes:
            self._remove(next(iter(self._data)))
            dropped += 1
        if dropped:
            self.evictions += dropped
            self._on_evict(dropped)

    def _remove(self, key: Key) -> None:
        vecs = self._data.pop(key, None)
        if vecs is None:
            return
        self.bytes -= vecs.nbytes + _OVERHEAD
        if key[0] and self._current.get(key[0]) == key[1]:
            del self._current[key[0]]


# Bytes per pair entry: a 16-byte digest key (a bytes object: 49), a float (24) and the
# ordered dict's node and slot (~90).
_PAIR_ENTRY = 163


class PairCache:
    """Cross-encoder scores by (model tag, prepared query, document text), LRU in bytes."""

    def __init__(self, max_bytes: int, tag: str, on_evict: Evicted = _ignore) -> None:
        self.max_bytes = max_bytes
        self.tag = tag
        self._on_evict = on_evict
        self._data: OrderedDict[bytes, float] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return len(self._data) * _PAIR_ENTRY

    def key(self, query: str, text: str) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for part in (self.tag, query):
            raw = part.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(8, "little"))  # no two (tag, query) splits collide
            h.update(raw)
        h.update(digest(text))
        return h.digest()

    def get(self, key: bytes) -> float | None:
        score = self._data.get(key)
        if score is not None:
            self._data.move_to_end(key)
        return score

    def put(self, key: bytes, score: float) -> None:
        if self.max_bytes < _PAIR_ENTRY:
            return
        self._data[key] = float(score)
        self._data.move_to_end(key)
        dropped = 0
        while len(self._data) * _PAIR_ENTRY > self.max_bytes:
            self._data.popitem(last=False)
            dropped += 1
        if dropped:
            self.evictions += dropped
            self._on_evict(dropped)


def embedding_sinks(
    cache: EmbeddingCache, cache_id: str, text: str, windows: list[str]
) -> list[Callable[[np.ndarray], None]]:
    """One batcher sink per passage window; the last to arrive puts the document in the
    cache (after the request answered too: late work still fills it)."""
    got: list[np.ndarray | None] = [None] * len(windows)

    def sink_for(k: int) -> Callable[[np.ndarray], None]:
        def sink(vec: np.ndarray) -> None:
            got[k] = vec
            done = [v for v in got if v is not None]
            if len(done) == len(got):
                cache.put(cache_id, text, np.stack(done))

        return sink

    return [sink_for(k) for k in range(len(windows))]


def pair_sinks(
    cache: PairCache, key: bytes, windows: list[str]
) -> list[Callable[[np.ndarray], None]]:
    """One sink per window; the last to arrive puts the document's best score in the pair
    cache (after the request answered too: late work still fills it)."""
    got: list[float | None] = [None] * len(windows)

    def sink_for(k: int) -> Callable[[np.ndarray], None]:
        def sink(out: np.ndarray) -> None:
            got[k] = float(out)
            done = [v for v in got if v is not None]
            if len(done) == len(got):
                cache.put(key, max(done))

        return sink

    return [sink_for(k) for k in range(len(windows))]


__all__ = ["EmbeddingCache", "PairCache", "digest", "embedding_sinks", "pair_sinks"]
