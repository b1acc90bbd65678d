"""``python -m app migrate``: a team's Elasticsearch index copied, with index-time vectors,
into a new index behind the same name; nothing of theirs rewritten in place.

1. The source: ``NAME`` is an alias of one index, or a concrete index (then it is replaced by
   an alias of the same name, in the switching call, only with ``--replace-index``).
2. ``NAME-<epoch-ms>`` is created with the source's mapping and settings (less those an index
   cannot be created with: uuid, creation date, version, provided name, ...) plus the vector
   fields (``embedding_f16`` binary, ``embedding_tag`` keyword, ``embedding`` dense_vector
   indexed for kNN). Every field of theirs keeps its type, analyzer and sub-fields.
3. ``_reindex`` copies the documents (one call, waited on), ``app embed``'s walk adds the
   vectors, and the copy's count must equal the source's (a write during the migration
   shows as a difference: nothing is switched).
4. One ``_aliases`` call moves ``NAME`` (and any other alias of a replaced concrete index).
   The old index behind an alias is kept, for the team to delete when satisfied.

Any failure before the switch deletes the copy and leaves everything as it was.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import AsyncElasticsearch

from retrieval.elastic.embed import embed_in_place
from retrieval.elastic.mapping import META_KEY, Fields, check_fields, vector_properties
from retrieval.errors import IndexMissing, RetrievalError, SetupError
from retrieval.vectors import Embedder, EmbedReport

# Settings an index reports but cannot be created with (flat names, prefixes included).
NOT_COPIED = (
    "index.uuid",
    "index.creation_date",
    "index.version.",
    "index.provided_name",
    "index.history_uuid",
    "index.resize.",
    "index.shrink.",
    "index.verified_before_close",
    "index.blocks.",  # a read-only source must not make a read-only copy
    "index.lifecycle.indexing_complete",
)
REINDEX_TIMEOUT_S = 3600.0  # the one `_reindex` call is waited on this long at most


@dataclass
class Migration:
    """What ``migrate`` did, for its summary."""

    source: str  # the concrete index copied
    dest: str
    copied: int = 0
    embed: EmbedReport | None = None
    replaced: bool = False  # the source was a concrete index, now deleted in the switch
    aliases: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        lines = [f"copied {self.copied} documents from {self.source!r} into {self.dest!r}"]
        if self.embed is not None:
            lines.append(f"vectors: {self.embed.summary()}")
        lines.append(f"alias {name!r} -> {self.dest!r} (one _aliases call)")
        if self.replaced:
            lines.append(f"the concrete index {self.source!r} was replaced by that alias")
        else:
            lines.append(f"the old index {self.source!r} is kept: delete it when satisfied")
        return "\n".join(lines)


def copyable(settings: dict[str, Any]) -> dict[str, Any]:
    """The source's flat settings an index can be created with."""
    return {
        k: v
        for k, v in settings.items()
        if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in NOT_COPIED)
    }


def with_vectors(mapping: dict[str, Any], dims: int | None, source: str) -> dict[str, Any]:
    """The source's mapping plus the vector fields it lacks; its own fields untouched."""
    out = dict(mapping)
    props = dict(out.get("properties") or {})
    for name, spec in vector_properties(dims, knn=True).items():
        have = props.get(name)
        if have is None:
            props[name] = spec
        elif name != "embedding" and have.get("type") != spec["type"]:
            raise SetupError(
                f"index {source!r} maps {name!r} as {have.get('type')!r}, not "
                f"{spec['type']!r}: cannot store vectors there"
            )
    out["properties"] = props
    meta = dict(out.get("_meta") or {})
    meta.setdefault(META_KEY, {"migrated_from": source})  # ours stays ours; theirs theirs
    out["_meta"] = meta
    return out


async def migrate(
    client: AsyncElasticsearch,
    name: str,
    fields: Fields,
    *,
    replace_index: bool = False,
    embed: Embedder | None = None,
    tag: str = "",
    dims: int | None = None,
    batch: int = 256,
    progress: bool = True,
) -> Migration:
    source, aliases, replaced = await _source(client, name, replace_index)
    got_mapping = (await client.indices.get_mapping(index=source)).body
    check_fields(got_mapping, name, fields)  # the fields the vectors are read from
    settings = (await client.indices.get_settings(index=source, flat_settings=True)).body
    run = Migration(source, f"{name}-{time.time_ns() // 1_000_000}", replaced=replaced)
    mapping = with_vectors(got_mapping[source].get("mappings") or {}, dims, source)
    await client.indices.create(
        index=run.dest, settings=copyable(settings[source]["settings"]), mappings=mapping
    )
    try:
        done = await client.options(request_timeout=REINDEX_TIMEOUT_S).reindex(
            source={"index": source}, dest={"index": run.dest}, wait_for_completion=True
        )
        failures = done.body.get("failures") or []
        if failures:
            raise RetrievalError(f"_reindex into {run.dest!r} failed: {failures[0]}")
        await client.indices.refresh(index=run.dest)
        if embed is not None:
            run.embed = await embed_in_place(
                client, run.dest, embed, tag, dims, fields, batch=batch, progress=progress
            )
            if run.embed.failed:
                raise RetrievalError(f"{run.embed.failed} documents got no vectors: rerun")
        await client.indices.refresh(index=run.dest)
        run.copied = await _count(client, run.dest)
        expected = await _count(client, source)
        if run.copied != expected:
            raise RetrievalError(
                f"the copy has {run.copied} documents, {source!r} has {expected} (written to "
                "during the migration?): nothing was switched; run it again"
            )
        actions = [{"add": {"index": run.dest, "alias": a, **spec}} for a, spec in aliases]
        if replaced:
            actions.append({"remove_index": {"index": source}})
        else:
            actions.append({"remove": {"index": source, "alias": name}})
        await client.indices.update_aliases(actions=actions)
        run.aliases = [a for a, _ in aliases]
    except BaseException:
        with contextlib.suppress(Exception):  # not switched: the copy is of no use
            targets = await client.options(ignore_status=404).indices.get_alias(name=name)
            if run.dest not in (targets.body if targets.meta.status == 200 else {}):
                await client.options(ignore_status=404).indices.delete(index=run.dest)
        raise
    return run


async def _count(client: AsyncElasticsearch, index: str) -> int:
    return int((await client.count(index=index)).body["count"])


async def _source(
    client: AsyncElasticsearch, name: str, replace_index: bool
) -> tuple[str, list[tuple[str, dict[str, Any]]], bool]:
    """(the concrete index, the aliases to put on the copy with their filters/routing,
    whether the concrete index is replaced)."""
    got = await client.options(ignore_status=404).indices.get_alias(name=name)
    if got.meta.status == 200 and isinstance(got.body, dict) and got.body:
        if len(got.body) != 1:
            raise SetupError(
                f"alias {name!r} points at {len(got.body)} indexes ({', '.join(sorted(got.body))})"
                ": migrate copies one; point --es-index at one of them"
            )
        ((source, body),) = got.body.items()
        return source, [(name, dict(body.get("aliases", {}).get(name) or {}))], False
    exists = await client.options(ignore_status=404).indices.exists(index=name)
    if exists.meta.status != 200:
        raise IndexMissing(f"index {name!r} not found: set --es-index to the index to migrate")
    if not replace_index:
        raise SetupError(
            f"{name!r} is a concrete index, not an alias: the service reads a name that a copy "
            f"can be switched in under, so migrate puts an alias {name!r} in its place, deleting "
            "the index itself in the same _aliases call (after its copy is complete and "
            "counted). Nothing was changed. Rerun with --replace-index to do that."
        )
    own = (await client.indices.get_alias(index=name)).body.get(name, {}).get("aliases", {})
    return name, [(name, {}), *((a, dict(spec or {})) for a, spec in own.items())], True
