"""``python -m app embed`` on Elasticsearch: add index-time vectors to the documents of an
existing index in place, with partial updates that touch only the vector fields.

Resumable: only documents whose stored tag differs from the engine's are asked for, so a
rerun after an interruption continues where it stopped. Bounded memory: the walk is a
point in time + ``search_after`` (a scroll where point in time is not available), one page
of ``batch`` documents at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from elastic_transport import ApiError as TransportApiError
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from retrieval.elastic.index import vector_fields
from retrieval.elastic.mapping import VECTOR, VECTOR_F16, VECTOR_TAG, vector_properties
from retrieval.errors import RetrievalError
from retrieval.types import Document
from retrieval.vectors import Embedder, EmbedReport

KEEP_ALIVE = "5m"  # between two pages: embedding a page takes seconds, not minutes


async def embed_in_place(
    client: AsyncElasticsearch,
    index: str,
    embed: Embedder,
    tag: str,
    dims: int | None,
    fields: tuple[str, str],
    *,
    batch: int = 256,
    max_batches: int | None = None,
    progress: bool = True,
) -> EmbedReport:
    """Give every document of ``index`` without this ``tag`` its vectors; ``max_batches``
    stops early (a partial run, as Ctrl-C would leave it)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    dims = await ensure_vector_mapping(client, index, dims)
    todo_query = {"bool": {"must_not": [{"term": {VECTOR_TAG: tag}}]}}
    total = int((await client.count(index=index)).body["count"])
    todo = int((await client.count(index=index, query=todo_query)).body["count"])
    report = EmbedReport(skipped=total - todo)
    title_field, text_field = fields
    try:
        with tqdm(total=todo, unit="doc", desc="embedding", disable=not progress) as bar:
            pages = 0
            async for hits in walk(client, index, todo_query, [title_field, text_field], batch):
                docs = [
                    Document(
                        str(h["_id"]),
                        str(h.get("_source", {}).get(title_field) or ""),
                        str(h.get("_source", {}).get(text_field) or ""),
                    )
                    for h in hits
                ]
                vecs = await asyncio.to_thread(embed, docs)
                actions = [
                    {
                        "_op_type": "update",
                        "_index": h["_index"],
                        "_id": h["_id"],
                        "doc": vector_fields(vecs[i], tag, dims),
                    }
                    for i, h in enumerate(hits)
                ]
                ok, errors = await async_bulk(client, actions, raise_on_error=False)
                failed = len(errors) if isinstance(errors, list) else int(errors)
                report.embedded += ok
                report.failed += failed
                bar.update(len(hits))
                pages += 1
                if max_batches is not None and pages >= max_batches:
                    break
    finally:
        await client.options(ignore_status=404).indices.refresh(index=index)
        report.seconds = time.perf_counter() - t0
    return report


async def ensure_vector_mapping(
    client: AsyncElasticsearch, index: str, dims: int | None
) -> int | None:
    """Add the vector fields the mapping lacks (without them, dynamic mapping would make
    the float16 copy a text field); returns the dims to write as a dense_vector (None: the
    index has an ``embedding`` field of another shape, which is left alone)."""
    got = (await client.indices.get_mapping(index=index)).body
    have: dict[str, Any] = {}
    for body in got.values():  # keyed by the concrete index, also through an alias
        have.update(body.get("mappings", {}).get("properties", {}))
    missing = {k: v for k, v in vector_properties(dims).items() if k not in have}
    for name in (VECTOR_F16, VECTOR_TAG):
        if name in have and have[name].get("type") != vector_properties(None)[name]["type"]:
            raise RetrievalError(
                f"index {index!r} maps {name!r} as {have[name].get('type')!r}, "
                f"not {vector_properties(None)[name]['type']!r}: cannot store vectors there"
            )
    if missing:
        await client.indices.put_mapping(index=index, properties=missing)
    existing = have.get(VECTOR)
    if existing is not None and (
        existing.get("type") != "dense_vector" or existing.get("dims") != dims
    ):
        return None
    return dims


async def walk(
    client: AsyncElasticsearch, index: str, query: dict[str, Any], source: list[str], size: int
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pages of hits matching ``query``: point in time + ``search_after``, else a scroll."""
    try:
        pit = (await client.open_point_in_time(index=index, keep_alive=KEEP_ALIVE)).body["id"]
    except TransportApiError:
        async for page in _scroll(client, index, query, source, size):
            yield page
        return
    after: list[Any] | None = None
    try:
        while True:
            extra: dict[str, Any] = {"search_after": after} if after is not None else {}
            resp = await client.search(
                pit={"id": pit, "keep_alive": KEEP_ALIVE},
                query=query,
                sort=["_shard_doc"],
                size=size,
                source_includes=source,
                track_total_hits=False,
                **extra,
            )
            pit = resp.body.get("pit_id", pit)
            hits = resp.body["hits"]["hits"]
            if not hits:
                return
            yield hits
            after = hits[-1]["sort"]
    finally:
        await client.options(ignore_status=404).close_point_in_time(id=pit)


async def _scroll(
    client: AsyncElasticsearch, index: str, query: dict[str, Any], source: list[str], size: int
) -> AsyncIterator[list[dict[str, Any]]]:
    resp = await client.search(
        index=index,
        scroll=KEEP_ALIVE,
        query=query,
        sort=["_doc"],
        size=size,
        source_includes=source,
    )
    scroll_id = resp.body.get("_scroll_id")
    try:
        while hits := resp.body["hits"]["hits"]:
            yield hits
            resp = await client.scroll(scroll_id=scroll_id, scroll=KEEP_ALIVE)
            scroll_id = resp.body.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            await client.options(ignore_status=404).clear_scroll(scroll_id=scroll_id)
