"""Elasticsearch backend: one pooled ``AsyncElasticsearch`` client per process, one
``_msearch`` round trip per chunk, and only the ``_source`` fields we score."""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from elastic_transport import ApiError as TransportApiError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import AsyncElasticsearch, BadRequestError, NotFoundError

from retrieval.config import RetrievalConfig
from retrieval.elastic.mapping import (
    TEXT,
    TITLE,
    VECTOR_F16,
    VECTOR_TAG,
    FieldCheck,
    Fields,
    check_knn_field,
    field_text,
    index_missing,
    knn_body,
)
from retrieval.errors import (
    BackendTimeout,
    BackendUnavailable,
    IndexMismatch,
    IndexMissing,
    InvalidQuery,
    KnnUnavailable,
    RetrievalError,
)
from retrieval.trace import OUTGOING, client_spans
from retrieval.types import Depth, Hit, PartialHits, SubQuery, depths
from retrieval.vectors import from_b64

_DEFAULT = RetrievalConfig()
log = logging.getLogger("retrieval")


def make_client(
    url: str,
    *,
    timeout_s: float = _DEFAULT.es_timeout_s,
    connections: int = _DEFAULT.es_connections,
    api_key: str | None = None,
) -> AsyncElasticsearch:
    return AsyncElasticsearch(
        url, request_timeout=timeout_s, connections_per_node=connections, api_key=api_key,
        retry_on_timeout=False, max_retries=0,
    )  # fmt: skip


def query_body(
    q: SubQuery, k: int, vectors: bool = False, fields: Fields = (TITLE, TEXT)
) -> dict[str, Any]:
    """User text only ever goes in as a ``match`` string (never query_string); a DSL
    sub-query goes in as the object the caller sent, never as built-up text."""
    query: dict[str, Any]
    title, text = fields
    if q.kind == "ids":
        query = {"ids": {"values": list(q.ids)}}
        k = max(k, len(q.ids))
    elif q.kind == "dsl":
        query = q.dsl_query()
    elif q.field:
        query = {"match": {title if q.field == TITLE else text: {"query": q.text}}}
    else:
        # most_fields sums both fields' BM25, as the embedded index does: best_fields (max of
        # the two) cost 0.037 BM25 NDCG@10 and pulled fusion below the model (docs/QUALITY.md).
        query = {"multi_match": {"query": q.text, "fields": [title, text], "type": "most_fields"}}
    source = [title, text, VECTOR_F16, VECTOR_TAG] if vectors else [title, text]
    return {"query": query, "size": k, "_source": source}


class ElasticBackend:
    name = "elasticsearch"

    def __init__(
        self,
        client: AsyncElasticsearch,
        index: str,
        timeout_s: float = _DEFAULT.es_timeout_s,
        vector_tag: str | None = None,
        fields: Fields = (_DEFAULT.es_title_field, _DEFAULT.es_text_field),
        tracer: Any = None,
    ) -> None:
        """``vector_tag``: fetch stored vectors and keep those with this tag (None: never).
        ``fields``: the (title, text) fields read; ``tracer``: the client's spans'."""
        self._es = client
        self._index = index
        self._timeout_s = timeout_s
        self._vector_tag = vector_tag
        self.fields, self._otel = fields, client_spans(tracer)
        self._fields = FieldCheck(index, fields)
        self.problem: str | None = None  # why the last readiness check failed, for /readyz

    async def check(self) -> None:
        """Checks the configured fields against the index mapping (once it succeeded).
        Raises ``IndexMismatch`` for a missing field, ``IndexMissing`` without the index,
        ``BackendUnavailable`` when the cluster cannot be asked."""
        await self._fields.run(self._mapping)

    async def _mapping(self) -> Any:
        try:
            resp = await self._es.options(request_timeout=self._timeout_s).indices.get_mapping(
                index=self._index
            )
        except NotFoundError as exc:
            raise IndexMissing(index_missing(self._index)) from exc
        except (TransportApiError, TransportError) as exc:
            raise BackendUnavailable(f"get_mapping failed: {_describe(exc)}") from exc
        return resp.body

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: Depth, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        await self._fields.before_search(self._mapping)
        searches: list[dict[str, Any]] = []
        vectors = self._vector_tag is not None
        for q, size in zip(queries, depths(k, len(queries)), strict=True):
            searches.append({"index": self._index})
            searches.append(query_body(q, size, vectors, self.fields))
        responses = await self._msearch(searches, deadline)
        return [
            _parse(r, self._vector_tag, self.fields, q.kind == "dsl")
            for r, q in zip(responses, queries, strict=True)
        ]

    async def search_knn(
        self, vector: np.ndarray, k: int, deadline: float | None = None
    ) -> list[Hit]:
        """Approximate kNN (the cluster's HNSW), only over vectors with the serving tag."""
        if self._vector_tag is None:
            raise KnnUnavailable("kNN: this model stores no document vectors (a cross-encoder)")
        body = knn_body(vector, k, self._vector_tag, self.fields)
        (r,) = await self._msearch([{"index": self._index}, body], deadline)
        hits = _parse(r, self._vector_tag, self.fields, dsl=True)
        if isinstance(hits, InvalidQuery):  # 400: no indexed dense_vector of these dims
            raise KnnUnavailable(f"kNN: {hits}")
        if isinstance(hits, RetrievalError):
            raise hits
        # ES scores a cosine similarity as (1 + cos) / 2; the service speaks cosine.
        return [dataclasses.replace(h, score=2.0 * h.score - 1.0) for h in hits]

    async def check_knn(self) -> None:
        check_knn_field(await self._mapping(), self._index)

    async def _msearch(self, searches: list[dict[str, Any]], deadline: float | None) -> list[Any]:
        """One ``_msearch`` round trip; its items, one per search (header + body pair)."""
        # The request's remaining budget bounds what ES may take: an answer after the
        # deadline is of no use. 90% of it, so that ES's timeout (a clear 503, seen by the
        # breaker) fires before the request's own deadline abandons the chunk.
        timeout = self._timeout_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendTimeout("budget spent before Elasticsearch was asked", 0.0)
            timeout = min(timeout, 0.9 * left)
        es = self._es.options(request_timeout=timeout, headers=OUTGOING.get() or {})
        es._otel = self._otel  # see retrieval/trace.py client_spans
        try:
            resp = await es.msearch(searches=searches)
        except NotFoundError as exc:
            raise IndexMissing(index_missing(self._index)) from exc
        except BadRequestError as exc:
            # The cluster is up and refused the request itself: not the breaker's business.
            raise RetrievalError(f"_msearch rejected: {_describe(exc)}") from exc
        except ConnectionTimeout as exc:
            raise BackendTimeout(
                f"_msearch timed out after {timeout * 1000:.0f} ms", timeout
            ) from exc
        except (TransportApiError, TransportError) as exc:
            raise BackendUnavailable(f"_msearch failed: {_describe(exc)}") from exc
        body = resp.body
        responses = body.get("responses") if isinstance(body, dict) else None
        if not isinstance(responses, list) or len(responses) != len(searches) // 2:
            raise BackendUnavailable("_msearch answered a malformed body")
        return responses

    def queue_age(self) -> float:
        return 0.0  # the searching is the cluster's: its queue is not ours to see

    async def ping(self) -> bool:
        """Reachable, and the index has the configured fields (re-checked while a mismatch
        stands, so a fixed mapping is seen); ``problem`` says why not."""
        try:
            up = await self._es.ping()
            self.problem = None if up else "Elasticsearch unreachable: no answer to a ping"
        except (TransportApiError, TransportError) as exc:
            up, self.problem = False, f"Elasticsearch unreachable: {_describe(exc)}"
        if not up:
            return False
        self._fields.recheck()
        try:
            await self.check()
        except IndexMismatch as exc:
            self.problem = str(exc)
            return False
        except RetrievalError:
            pass  # a missing index: searches say so (index_missing); the cluster is up
        return True

    async def num_docs(self) -> int | None:
        try:
            got = await self._es.options(ignore_status=404).count(index=self._index)
        except (TransportApiError, TransportError) as exc:
            self.problem = f"_count failed: {_describe(exc)}"
            return None
        n = int(got.body.get("count", 0)) if got.meta.status == 200 else 0
        if got.meta.status == 404:
            self.problem = index_missing(self._index)
        elif n == 0:
            self.problem = f"index {self._index!r} has no documents"
        return n

    async def close(self) -> None:
        await self._es.close()


def _error_reason(err: Any) -> str:
    """The most specific message in an ES error: its first root cause, else its reason."""
    if not isinstance(err, dict):
        return str(err)
    causes = err.get("root_cause")
    if isinstance(causes, list) and causes and isinstance(causes[0], dict):
        cause = causes[0]
        return f"{cause.get('type', 'error')}: {cause.get('reason', '')}".rstrip(": ")
    return f"{err.get('type', 'error')}: {err.get('reason', '')}".rstrip(": ")


def _parse(
    r: Any, vector_tag: str | None = None, fields: Fields = (TITLE, TEXT), dsl: bool = False
) -> list[Hit] | RetrievalError:
    if not isinstance(r, dict):
        return RetrievalError("malformed _msearch item")
    if "error" in r:
        err = r["error"]
        if isinstance(err, dict) and err.get("type") == "index_not_found_exception":
            # _msearch reports a missing index per item, inside a 200.
            name = err.get("index") or err.get("resource.id") or err.get("reason")
            return IndexMissing(index_missing(str(name)))
        status = r.get("status", "?")
        if dsl and status == 400:
            # The caller's query DSL was refused: their error, named by the fan-out.
            return InvalidQuery(f"Elasticsearch rejected the query: {_error_reason(err)}")
        return RetrievalError(f"status {status}: {_error_reason(err)}")
    try:
        hits = [_hit(h, vector_tag, fields) for h in r["hits"]["hits"]]
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


def _hit(h: Any, vector_tag: str | None, fields: Fields = (TITLE, TEXT)) -> Hit:
    src = h.get("_source") or {}
    vec = None
    if vector_tag is not None and src.get(VECTOR_TAG) == vector_tag and src.get(VECTOR_F16):
        with contextlib.suppress(ValueError, binascii.Error):  # corrupt: embed it instead
            vec = from_b64(src[VECTOR_F16])
    return Hit(
        str(h["_id"]),
        field_text(src, fields[0]),
        field_text(src, fields[1]),
        float(h.get("_score") or 0.0),
        vec,
    )


def _describe(exc: Exception) -> str:
    status = getattr(getattr(exc, "meta", None), "status", None)
    if status == 429:
        return "Elasticsearch is shedding load (HTTP 429)"
    if status == 400 and isinstance(getattr(exc, "body", None), dict):
        return f"HTTP 400: {_error_reason(exc.body.get('error'))}"  # type: ignore[attr-defined]
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else f": {exc}")
