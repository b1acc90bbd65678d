"""Elasticsearch backend: one pooled ``AsyncElasticsearch`` client per process, one
``_msearch`` round trip per chunk, and only the ``_source`` fields we score."""

from __future__ import annotations

import binascii
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from elastic_transport import ApiError as TransportApiError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import AsyncElasticsearch, NotFoundError

from retrieval.config import RetrievalConfig
from retrieval.errors import BackendTimeout, BackendUnavailable, IndexMissing, RetrievalError
from retrieval.types import Hit, PartialHits, SubQuery
from retrieval.vectors import from_b64

TITLE, TEXT = "title", "text"
# Index-time embeddings: ``embedding`` is a standard dense_vector (for kNN by other tools);
# searches fetch the compact float16 copy instead (a quarter of the JSON floats' bytes).
VECTOR, VECTOR_F16, VECTOR_TAG = "embedding", "embedding_f16", "embedding_tag"

_DEFAULT = RetrievalConfig()


def make_client(
    url: str,
    *,
    timeout_s: float = _DEFAULT.es_timeout_s,
    connections: int = _DEFAULT.es_connections,
    api_key: str | None = None,
) -> AsyncElasticsearch:
    return AsyncElasticsearch(
        url,
        request_timeout=timeout_s,
        connections_per_node=connections,
        api_key=api_key,
        retry_on_timeout=False,
        max_retries=0,
    )


def query_body(q: SubQuery, k: int, vectors: bool = False) -> dict[str, Any]:
    """User text only ever goes in as a ``match`` string: never query_string, never DSL."""
    query: dict[str, Any]
    if q.kind == "ids":
        query = {"ids": {"values": list(q.ids)}}
        k = max(k, len(q.ids))
    elif q.field:
        query = {"match": {q.field: {"query": q.text}}}
    else:
        query = {"multi_match": {"query": q.text, "fields": [TITLE, TEXT]}}
    source = [TITLE, TEXT, VECTOR_F16, VECTOR_TAG] if vectors else [TITLE, TEXT]
    return {"query": query, "size": k, "_source": source}


class ElasticBackend:
    name = "elasticsearch"

    def __init__(
        self,
        client: AsyncElasticsearch,
        index: str,
        timeout_s: float = _DEFAULT.es_timeout_s,
        vector_tag: str | None = None,
    ) -> None:
        """``vector_tag``: fetch stored vectors and keep those with this tag (None: never)."""
        self._es = client
        self._index = index
        self._timeout_s = timeout_s
        self._vector_tag = vector_tag

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        searches: list[dict[str, Any]] = []
        for q in queries:
            searches.append({"index": self._index})
            searches.append(query_body(q, k, self._vector_tag is not None))
        # The request's remaining budget bounds what ES may take: an answer after the
        # deadline is of no use. 90% of it, so that ES's timeout (a clear 503, seen by the
        # breaker) fires before the request's own deadline abandons the chunk.
        timeout = self._timeout_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RetrievalError("budget spent before Elasticsearch was asked")
            timeout = min(timeout, 0.9 * left)
        try:
            resp = await self._es.options(request_timeout=timeout).msearch(searches=searches)
        except NotFoundError as exc:
            raise IndexMissing(f"index {self._index!r} not found") from exc
        except ConnectionTimeout as exc:
            raise BackendTimeout(
                f"_msearch timed out after {timeout * 1000:.0f} ms", timeout
            ) from exc
        except (TransportApiError, TransportError) as exc:
            raise BackendUnavailable(f"_msearch failed: {_describe(exc)}") from exc
        body = resp.body
        responses = body.get("responses") if isinstance(body, dict) else None
        if not isinstance(responses, list) or len(responses) != len(queries):
            raise BackendUnavailable("_msearch answered a malformed body")
        return [_parse(r, self._vector_tag) for r in responses]

    async def ping(self) -> bool:
        try:
            return bool(await self._es.ping())
        except (TransportApiError, TransportError):
            return False

    async def num_docs(self) -> int | None:
        try:
            got = await self._es.options(ignore_status=404).count(index=self._index)
        except (TransportApiError, TransportError):
            return None
        return int(got.body.get("count", 0)) if got.meta.status == 200 else 0

    async def close(self) -> None:
        await self._es.close()


def _parse(r: Any, vector_tag: str | None = None) -> list[Hit] | RetrievalError:
    if not isinstance(r, dict):
        return RetrievalError("malformed _msearch item")
    if "error" in r:
        err = r["error"]
        reason = err.get("reason") or err.get("type") if isinstance(err, dict) else err
        if isinstance(err, dict) and err.get("type") == "index_not_found_exception":
            # _msearch reports a missing index per item, inside a 200.
            return IndexMissing(f"index {reason!r} not found (run `python -m app index`)")
        return RetrievalError(f"status {r.get('status', '?')}: {reason}")
    try:
        hits = [_hit(h, vector_tag) for h in r["hits"]["hits"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return RetrievalError(f"malformed hit: {exc}")
    # A 200 item can still be incomplete: ES answers with what the shards that made it
    # in time (or did not fail) found. Use the hits, but say so.
    shards = r.get("_shards")
    failed = shards.get("failed") if isinstance(shards, dict) else None
    if r.get("timed_out") is True:
        return PartialHits(hits, "incomplete: Elasticsearch timed out on some shards")
    if isinstance(failed, int) and failed > 0:
        return PartialHits(hits, f"incomplete: {failed} shard(s) failed")
    return hits


def _hit(h: Any, vector_tag: str | None) -> Hit:
    src = h.get("_source") or {}
    vec = None
    if vector_tag is not None and src.get(VECTOR_TAG) == vector_tag and src.get(VECTOR_F16):
        with contextlib.suppress(ValueError, binascii.Error):  # corrupt: embed it instead
            vec = from_b64(src[VECTOR_F16])
    return Hit(
        str(h["_id"]),
        str(src.get(TITLE) or ""),
        str(src.get(TEXT) or ""),
        float(h.get("_score") or 0.0),
        vec,
    )


def _describe(exc: Exception) -> str:
    status = getattr(getattr(exc, "meta", None), "status", None)
    if status == 429:
        return "Elasticsearch is shedding load (HTTP 429)"
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else f": {exc}")
