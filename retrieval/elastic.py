"""Elasticsearch backend: one pooled ``AsyncElasticsearch`` client per process, one
``_msearch`` round trip per chunk, and only the ``_source`` fields we score."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from elastic_transport import ApiError as TransportApiError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import AsyncElasticsearch, NotFoundError
from elasticsearch.helpers import async_streaming_bulk

from retrieval.corpus import Document
from retrieval.errors import BackendTimeout, BackendUnavailable, IndexMissing, RetrievalError
from retrieval.types import Hit, PartialHits, SubQuery

TITLE, TEXT = "title", "text"

MAPPING: dict[str, Any] = {
    "properties": {
        TITLE: {"type": "text", "analyzer": "english"},
        TEXT: {"type": "text", "analyzer": "english"},
    }
}


def make_client(
    url: str, *, timeout_s: float = 5.0, connections: int = 32, api_key: str | None = None
) -> AsyncElasticsearch:
    return AsyncElasticsearch(
        url,
        request_timeout=timeout_s,
        connections_per_node=connections,
        api_key=api_key,
        retry_on_timeout=False,
        max_retries=0,
    )


def query_body(q: SubQuery, k: int) -> dict[str, Any]:
    """User text only ever goes in as a ``match`` string: never query_string, never DSL."""
    query: dict[str, Any]
    if q.kind == "ids":
        query = {"ids": {"values": list(q.ids)}}
        k = max(k, len(q.ids))
    elif q.field:
        query = {"match": {q.field: {"query": q.text}}}
    else:
        query = {"multi_match": {"query": q.text, "fields": [TITLE, TEXT]}}
    return {"query": query, "size": k, "_source": [TITLE, TEXT]}


class ElasticBackend:
    name = "elasticsearch"

    def __init__(self, client: AsyncElasticsearch, index: str, timeout_s: float = 5.0) -> None:
        self._es = client
        self._index = index
        self._timeout_s = timeout_s

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        searches: list[dict[str, Any]] = []
        for q in queries:
            searches.append({"index": self._index})
            searches.append(query_body(q, k))
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
        return [_parse(r) for r in responses]

    async def ping(self) -> bool:
        try:
            return bool(await self._es.ping())
        except (TransportApiError, TransportError):
            return False

    async def close(self) -> None:
        await self._es.close()


def _parse(r: Any) -> list[Hit] | RetrievalError:
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
        hits = [
            Hit(
                str(h["_id"]),
                str(h.get("_source", {}).get(TITLE) or ""),
                str(h.get("_source", {}).get(TEXT) or ""),
                float(h.get("_score") or 0.0),
            )
            for h in r["hits"]["hits"]
        ]
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


def _describe(exc: Exception) -> str:
    status = getattr(getattr(exc, "meta", None), "status", None)
    if status == 429:
        return "Elasticsearch is shedding load (HTTP 429)"
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else f": {exc}")


async def index_corpus(
    client: AsyncElasticsearch,
    index: str,
    docs: Iterable[Document],
    total: int | None = None,
    progress: bool = True,
) -> None:
    """``index_documents`` behind a progress bar: the CLI's and the eval's way in."""
    from tqdm import tqdm

    with tqdm(total=total, unit="doc", desc="indexing", disable=not progress) as bar:
        async for n in index_documents(client, index, docs):
            bar.update(n)


async def index_documents(
    client: AsyncElasticsearch, index: str, docs: Iterable[Document], recreate: bool = True
) -> AsyncIterator[int]:
    """Create the index with an explicit mapping and bulk-load; yields after each document
    so the caller can drive a progress bar."""
    if recreate:
        await client.options(ignore_status=404).indices.delete(index=index)
        await client.indices.create(index=index, mappings=MAPPING)
    actions = ({"_index": index, "_id": d.doc_id, TITLE: d.title, TEXT: d.text} for d in docs)
    async for ok, item in async_streaming_bulk(
        client, actions, chunk_size=500, raise_on_error=False
    ):
        if not ok:
            raise RetrievalError(f"bulk indexing failed: {item}")
        yield 1
    await client.indices.refresh(index=index)
