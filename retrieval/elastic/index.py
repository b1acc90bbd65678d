"""Loading documents into Elasticsearch: the mapping, ``_bulk`` loads and the rebuild
behind an alias (the ``Indexer`` for ``python -m app index``: ``retrieval/elastic/indexer.py``).

A rebuild never takes the served index away: the service reads alias ``NAME``; a rebuild
loads a new physical index ``NAME-<epoch-ms>``, refreshes it, moves the alias in one
``_aliases`` call and only then deletes the old physical index. A crashed rebuild leaves
the alias where it was; its half-loaded index is deleted by the next rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_streaming_bulk

from retrieval.elastic.mapping import (
    TEXT,
    TITLE,
    VECTOR,
    VECTOR_F16,
    VECTOR_TAG,
    Fields,
    mapping,
    ownership,
)
from retrieval.errors import RetrievalError, SetupError
from retrieval.stall import Stall, no_stall
from retrieval.types import Document
from retrieval.vectors import BATCH, Embedder, chunked, to_b64

MAPPING: dict[str, Any] = mapping()


class NotAnAlias(SetupError):
    """The index name is a plain index: a rebuild without downtime needs an alias."""


class NotOurIndex(SetupError):
    """The name is an index (or an alias of indexes) that ``app index`` did not create:
    a team's index, which it must never replace."""


async def rebuild(
    client: AsyncElasticsearch,
    alias: str,
    docs: Iterable[Document],
    total: int | None = None,
    progress: bool = True,
    *,
    embed: Embedder | None = None,
    tag: str = "",
    dims: int | None = None,
    fields: tuple[str, str] = (TITLE, TEXT),
    stage: Stall = no_stall,
) -> int:
    """Load ``docs`` into a new ``ALIAS-<epoch-ms>`` and move the alias to it; returns how
    many were indexed. Raises ``NotOurIndex`` (changing nothing) when ``alias`` is or names
    an index ``app index`` did not create, ``NotAnAlias`` when it is a plain index of ours."""
    old = await alias_targets(client, alias, fields)
    await _drop_leftovers(client, alias, keep=old)
    physical = f"{alias}-{time.time_ns() // 1_000_000}"
    stage("start")
    try:
        n = await index_corpus(
            client,
            physical,
            docs,
            total,
            progress,
            embed=embed,
            tag=tag,
            dims=dims,
            fields=fields,
            stage=stage,
        )
        stage("switch")
        actions: list[dict[str, Any]] = [{"add": {"index": physical, "alias": alias}}]
        actions += [{"remove": {"index": o, "alias": alias}} for o in old]
        await client.indices.update_aliases(actions=actions)
    except BaseException:
        # Not switched: the alias still serves the old index; this one is of no use. (If
        # the switch did happen and only its answer was lost, keep it: it is served.)
        with contextlib.suppress(Exception):
            if physical not in await alias_targets(client, alias):
                await client.options(ignore_status=404).indices.delete(index=physical)
        raise
    if old:
        await client.options(ignore_status=404).indices.delete(index=",".join(old))
    return n


async def alias_targets(
    client: AsyncElasticsearch, alias: str, fields: Fields | None = None
) -> list[str]:
    """The physical indices behind ``alias`` (none when nothing is called that). With
    ``fields`` (the ones a rebuild would write), raises ``NotOurIndex`` unless every index
    there is ours, and ``NotAnAlias`` for a plain index of ours."""
    got = await client.options(ignore_status=404).indices.get_alias(name=alias)
    if got.meta.status == 200 and isinstance(got.body, dict) and got.body:
        targets = sorted(got.body)
        if fields is not None:
            await _refuse_theirs(client, alias, targets, fields)
        return targets
    if (await client.options(ignore_status=404).indices.exists(index=alias)).meta.status == 200:
        if fields is not None:
            await _refuse_theirs(client, alias, [alias], fields)
        raise NotAnAlias(_migration(alias))
    return []


async def _refuse_theirs(
    client: AsyncElasticsearch, name: str, indexes: list[str], fields: Fields
) -> None:
    got = (await client.indices.get_mapping(index=",".join(indexes))).body
    for concrete, body in sorted(got.items()):
        why = ownership(body or {}, fields)
        if why is not None:
            where = repr(name) if concrete == name else f"{name!r} (index {concrete!r})"
            raise NotOurIndex(
                f"refusing to replace index {where}: {why}. Nothing was changed. To serve it "
                "as it is, name its fields (--es-title-field, --es-text-field); to add vectors "
                "to a copy behind the same name: `python -m app migrate`; to load a corpus "
                "file, choose another --es-index."
            )


def _migration(name: str) -> str:
    return (
        f"Elasticsearch index {name!r} is a plain index, not an alias: a rebuild without "
        f"downtime loads a new index and moves alias {name!r} to it. Nothing was changed. "
        f"Migrate once (searches keep working): `python -m app migrate --es-index {name} "
        "--replace-index` copies it and puts an alias in its place in one call; then run "
        f"`python -m app index` again (or delete {name!r} first if a gap in service is "
        "acceptable)."
    )


async def _drop_leftovers(client: AsyncElasticsearch, alias: str, keep: list[str]) -> None:
    """Physical indices of crashed rebuilds (``ALIAS-<epoch-ms>`` behind no alias)."""
    rows = (await client.cat.indices(format="json")).body
    pattern = re.compile(rf"{re.escape(alias)}-\d{{13}}")  # ours only: epoch ms
    names = [r.get("index", "") for r in rows if isinstance(r, dict)]
    stale = [n for n in names if pattern.fullmatch(n) and n not in keep]
    if stale:
        await client.options(ignore_status=404).indices.delete(index=",".join(stale))


async def index_corpus(
    client: AsyncElasticsearch,
    index: str,
    docs: Iterable[Document],
    total: int | None = None,
    progress: bool = True,
    embed: Embedder | None = None,
    tag: str = "",
    dims: int | None = None,
    fields: tuple[str, str] = (TITLE, TEXT),
    stage: Stall = no_stall,
) -> int:
    """``index_documents`` behind a progress bar; returns how many were indexed."""
    from tqdm import tqdm

    done = 0
    with tqdm(total=total, unit="doc", desc="indexing", disable=not progress) as bar:
        async for n in index_documents(
            client, index, docs, embed=embed, tag=tag, dims=dims, fields=fields
        ):
            bar.update(n)
            done += n
            if done == 1:
                stage("load")
    return done


async def index_documents(
    client: AsyncElasticsearch,
    index: str,
    docs: Iterable[Document],
    recreate: bool = True,
    embed: Embedder | None = None,
    tag: str = "",
    dims: int | None = None,
    fields: tuple[str, str] = (TITLE, TEXT),
) -> AsyncIterator[int]:
    """Create the index with an explicit mapping and bulk-load; yields after each document
    so the caller can drive a progress bar. With ``embed``, each document carries its
    vector (``dims`` wide, for the dense_vector mapping) tagged ``tag``."""
    title_field, text_field = fields
    if recreate:
        wanted = mapping(title_field, text_field, dims if embed is not None else None)
        await client.options(ignore_status=404).indices.delete(index=index)
        await client.indices.create(index=index, mappings=wanted)

    async def actions() -> AsyncIterator[dict[str, Any]]:
        for batch in chunked(docs, BATCH):
            # Embedding is CPU work: off the loop that drives the bulk requests.
            vecs = await asyncio.to_thread(embed, batch) if embed is not None else None
            for i, d in enumerate(batch):
                action: dict[str, Any] = {"_index": index, "_id": d.doc_id}
                action[title_field] = d.title
                action[text_field] = d.text
                if vecs is not None:
                    action.update(vector_fields(vecs[i], tag, dims))
                yield action

    async for ok, item in async_streaming_bulk(
        client, actions(), chunk_size=500, raise_on_error=False
    ):
        if not ok:
            raise RetrievalError(f"bulk indexing failed: {item}")
        yield 1
    await client.indices.refresh(index=index)


def vector_fields(vec: Any, tag: str, dims: int | None) -> dict[str, Any]:
    """A document's index-time vector fields: the float16 copy searches read, its tag and
    (with ``dims``) the standard dense_vector for other tools."""
    out: dict[str, Any] = {VECTOR_F16: to_b64(vec), VECTOR_TAG: tag}
    if dims:
        out[VECTOR] = [round(float(x), 6) for x in vec]
    return out
