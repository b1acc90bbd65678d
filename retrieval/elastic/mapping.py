"""What an Elasticsearch index's mapping tells the service: whether the configured fields can
be read (``check_fields``), the vector fields it adds, and whether the index is one that
``python -m app index`` built and may therefore replace (``ownership``).

Ours is marked in the mapping's ``_meta`` (``{"rerank_service": {"created_by": "index"}}``).
Indexes built by versions before the mark are recognised by their mapping: exactly the
configured title and text fields (``text``, english analysis) plus our vector fields and
nothing else. Anything else is a team's index: never replaced, only copied
(``python -m app migrate``) or read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from retrieval.errors import BackendUnavailable, IndexMismatch, IndexMissing, KnnUnavailable

log = logging.getLogger("retrieval")

TITLE, TEXT = "title", "text"
# Index-time embeddings: ``embedding`` is a standard dense_vector, indexed (HNSW, cosine) for
# hybrid retrieval's kNN part and other tools; searches fetch the compact float16 copy
# instead (a quarter of the JSON floats' bytes).
VECTOR, VECTOR_F16, VECTOR_TAG = "embedding", "embedding_f16", "embedding_tag"
META_KEY = "rerank_service"
OURS = {META_KEY: {"created_by": "index"}}  # the `_meta` of an index `app index` built

Fields = tuple[str, str]  # (title field, text field) of the index searched


def index_missing(name: str) -> str:
    """The message of a missing index: it may be a team's name mistyped, so the fix is the
    flag; `app index` only ever creates an index of its own."""
    return (
        f"index {name!r} not found: set --es-index (RERANK_ES_INDEX) to an existing index or "
        "alias (`python -m app migrate` adds vectors to a copy of yours; `python -m app "
        "index --dataset DIR` builds a new one from a corpus file)"
    )


def mapping(title: str = TITLE, text: str = TEXT, dims: int | None = None) -> dict[str, Any]:
    """The explicit mapping of an index ``app index`` builds, marked ours (``dims``: with
    the ``dense_vector`` copy of the index-time vectors)."""
    props: dict[str, Any] = {
        title: {"type": "text", "analyzer": "english"},
        text: {"type": "text", "analyzer": "english"},
        **vector_properties(dims),
    }
    return {"_meta": OURS, "properties": props}


def vector_properties(dims: int | None, knn: bool = True) -> dict[str, Any]:
    """The vector fields; ``knn``: the dense_vector indexed (HNSW, cosine) for kNN searches
    (hybrid retrieval), as ``index``, ``embed`` and ``migrate`` add it."""
    props: dict[str, Any] = {VECTOR_F16: {"type": "binary"}, VECTOR_TAG: {"type": "keyword"}}
    if dims:
        props[VECTOR] = {"type": "dense_vector", "dims": dims, "index": False}
        if knn:
            props[VECTOR] |= {"index": True, "similarity": "cosine"}
    return props


def field_text(src: Any, name: str) -> str:
    """A field's text from ``_source`` (a dotted name walks objects; a list of values is
    joined); "" when a document lacks it."""
    value = src
    for part in name.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v is not None)
    return str(value)


def knn_body(vector: Any, k: int, tag: str, fields: Fields) -> dict[str, Any]:
    """An ``_msearch`` body for the ``k`` nearest stored vectors carrying ``tag``."""
    title, text = fields
    return {
        "knn": {
            "field": VECTOR,
            "query_vector": [float(x) for x in vector],
            "k": k,
            # HNSW explores this many per shard: recall near exact at a few times ``k``.
            "num_candidates": max(100, 5 * k),
            "filter": {"term": {VECTOR_TAG: tag}},
        },
        "size": k,
        "_source": [title, text, VECTOR_F16, VECTOR_TAG],
    }


def check_knn_field(body: Any, index: str) -> None:
    """Raises ``KnnUnavailable`` unless ``embedding`` is an indexed ``dense_vector`` in every
    index ``index`` names (an alias may name several; ``body``: ``get_mapping``'s)."""
    specs = [
        ((m.get("mappings") or {}).get("properties") or {}).get(VECTOR) or {}
        for m in (body.values() if isinstance(body, dict) else [])
        if isinstance(m, dict)
    ]
    if not specs or any(s.get("type") != "dense_vector" or s.get("index") is False for s in specs):
        raise KnnUnavailable(
            f"kNN: {index!r} has no indexed dense_vector field {VECTOR!r} (hybrid retrieval "
            "searches it): `python -m app migrate` copies the index with one, `python -m app "
            "embed` adds it where the field is absent"
        )


def ownership(body: dict[str, Any], fields: Fields) -> str | None:
    """None when the index (one ``get_mapping`` entry) is ours to replace; else why not."""
    mappings = body.get("mappings") or {}
    meta = mappings.get("_meta") or {}
    if isinstance(meta, dict) and meta.get(META_KEY) == OURS[META_KEY]:
        return None
    props = mappings.get("properties") or {}
    ours = {*fields, VECTOR, VECTOR_F16, VECTOR_TAG}
    if {*fields} <= set(props) <= ours and all(
        props[f].get("type") == "text" and props[f].get("analyzer") == "english" for f in fields
    ):
        return None  # built by a version before the mark: our mapping exactly
    theirs = sorted(set(props) - ours)
    what = f"fields of its own ({', '.join(theirs[:8])})" if theirs else "another mapping"
    return f"it was not created by `python -m app index` (it has {what})"


class FieldCheck:
    """Whether the index has the configured fields: asked until once answered; a mismatch
    found is kept (``fault``) and answers every search until a re-check (``/readyz``) finds
    the mapping fixed."""

    RETRY_S = 1.0  # from searches, at most this often: a key without mapping rights must
    # not double every search's round trips

    def __init__(self, index: str, fields: Fields) -> None:
        self.index, self.fields = index, fields
        self.fault: IndexMismatch | None = None
        self.done = False
        self._lock, self._retry_at = asyncio.Lock(), 0.0

    async def run(self, get_mapping: Callable[[], Awaitable[Any]]) -> None:
        if self.done:
            return
        async with self._lock:  # a burst of first searches asks once
            if self.done:
                return
            body = await get_mapping()
            try:
                check_fields(body, self.index, self.fields)
            except IndexMismatch as exc:
                if self.fault is None or str(self.fault) != str(exc):
                    log.error("%s", exc)
                self.fault = exc
                raise
            self.fault, self.done = None, True

    async def before_search(self, get_mapping: Callable[[], Awaitable[Any]]) -> None:
        """A known mismatch answers the search; an index unchecked (the cluster was down at
        start-up) is checked first, so no search is answered from the wrong fields."""
        if self.fault is not None:
            raise IndexMismatch(str(self.fault))
        if not self.done and time.monotonic() >= self._retry_at:
            self._retry_at = time.monotonic() + self.RETRY_S
            with contextlib.suppress(IndexMissing, BackendUnavailable):
                await self.run(get_mapping)  # those two: the search itself says so

    def recheck(self) -> None:
        """Ask again next time while a mismatch stands (it may have been fixed)."""
        self.done = self.done and self.fault is None


# Field types whose value is text the model can read.
TEXT_TYPES = {"text", "match_only_text", "keyword", "wildcard", "search_as_you_type"}


def check_fields(mappings: Any, index: str, fields: Fields) -> None:
    """Raise ``IndexMismatch`` naming the first configured field the index lacks or cannot
    serve as text. ``mappings`` is ``get_mapping``'s answer (keyed by concrete index, also
    when asked through an alias); a dotted name walks object ``properties``."""
    if not isinstance(mappings, dict) or not mappings:
        raise IndexMismatch(f"index {index!r}: no mapping to check the fields against")
    for concrete, body in mappings.items():
        where = repr(index) if concrete == index else f"{index!r} (index {concrete!r})"
        props = (body or {}).get("mappings", {}).get("properties", {})
        for name in fields:
            problem = _field_problem(props, name)
            if problem:
                raise IndexMismatch(f"field {name!r} {problem} in index {where}")


def _field_problem(props: dict[str, Any], name: str) -> str | None:
    node: dict[str, Any] = {"properties": props}
    parts = name.split(".")
    for i, part in enumerate(parts):
        inner = node.get("properties", {})
        if part not in inner:
            if part in node.get("fields", {}):
                return (
                    "is a multi-field: documents store the text under "
                    f"{'.'.join(parts[:i])!r}, name that field"
                )
            known = ", ".join(sorted(inner)) or "none"
            return f"does not exist (fields there: {known})"
        node = inner[part]
    kind = node.get("type", "object")
    if kind not in TEXT_TYPES:
        return f"is of type {kind!r}, not text (one of {', '.join(sorted(TEXT_TYPES))})"
    return None
