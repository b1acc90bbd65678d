"""Document embeddings kept between requests (bi-encoders only).

A popular document is embedded once, not once per search. Entries are keyed by the
document id *and* a digest of the exact text the model saw, so an edited document misses
and its stale vector is dropped at once. The cache is an LRU bounded by bytes, not entries:
a long document split into passages holds one vector per passage.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

Key = tuple[str, bytes]
_OVERHEAD = 200  # bytes per entry beyond the array data: key, node, array header


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._current: dict[str, bytes] = {}  # doc id -> digest of its latest text
        self.bytes = 0

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
        while self.bytes > self.max_bytes:
            self._remove(next(iter(self._data)))

    def _remove(self, key: Key) -> None:
        vecs = self._data.pop(key, None)
        if vecs is None:
            return
        self.bytes -= vecs.nbytes + _OVERHEAD
        if key[0] and self._current.get(key[0]) == key[1]:
            del self._current[key[0]]


__all__ = ["EmbeddingCache", "digest"]
