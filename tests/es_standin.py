"""An Elasticsearch-protocol stand-in on a loopback port, for the real ``AsyncElasticsearch``
client. No Elasticsearch can be installed on these machines, so this speaks just enough of
the REST API (info, index create/delete, ``_bulk``, ``_refresh``, ``_msearch``) and records
what it was asked, with hooks to delay or fail specific searches.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web

HEADERS = {"X-Elastic-Product": "Elasticsearch"}
CTYPE = "application/vnd.elasticsearch+json; compatible-with=9"
_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class StandIn:
    docs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    msearch_calls: list[list[dict[str, Any]]] = field(default_factory=list)
    msearch_headers: list[dict[str, str]] = field(default_factory=list)  # each call's
    bulk_calls: int = 0
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> index (one each)
    mappings: dict[str, dict[str, Any]] = field(default_factory=dict)  # as created
    # Seconds to wait before answering an _msearch, given its search bodies.
    delay: Callable[[list[dict[str, Any]]], float] = lambda bodies: 0.0
    # HTTP status to fail a whole _msearch with (None: answer normally).
    fail_status: Callable[[list[dict[str, Any]]], int | None] = lambda bodies: None
    # Per-search error: return an error item for that one search (None: answer normally).
    fail_item: Callable[[dict[str, Any]], str | None] = lambda body: None
    # Raw bytes to answer an _msearch with, as a 200 (None: answer normally).
    malformed: Callable[[list[dict[str, Any]]], bytes | None] = lambda bodies: None
    # Keys merged into one search's item of a 200 answer ({"timed_out": True}, "_shards").
    item_extra: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda body: None
    # When set, _msearch is forwarded to this real cluster after the delay/fail hooks:
    # the same fault scenarios then run against real Elasticsearch.
    upstream: str | None = None
    _cache_key: tuple[Any, ...] | None = None
    _cache: tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: ([], {})
    )

    def queries_sent(self) -> list[dict[str, Any]]:
        return [b["query"] for call in self.msearch_calls for b in call]

    # --- search semantics: a small BM25-ish scorer, enough to rank sensibly ----------
    def _analysed(
        self, index: str, fields: tuple[str, ...]
    ) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Document ids, and per term its postings: the documents that hold it and their
        saturated term frequency, ``tf / (tf + 1.2)``. Cached until the index changes, and
        scored with numpy: a stand-in that scans the corpus in Python per query takes
        more CPU than the service it stands in front of (measured: 6-8 ms a search on
        the 2,760-document default corpus)."""
        docs = self.docs.get(index, {})
        key = (index, fields, len(docs), id(docs))
        if self._cache_key != key:
            ids = list(docs)
            lists: dict[str, tuple[list[int], list[float]]] = {}
            for i, d in enumerate(docs.values()):
                tf = Counter(_terms(" ".join(str(d.get(f, "")) for f in fields)))
                for term, count in tf.items():
                    at, ws = lists.setdefault(term, ([], []))
                    at.append(i)
                    ws.append(count / (count + 1.2))
            postings = {t: (np.array(at), np.array(ws)) for t, (at, ws) in lists.items()}
            self._cache_key, self._cache = key, (ids, postings)
        return self._cache

    def _score(
        self, index: str, query: dict[str, Any], size: int
    ) -> tuple[int, list[tuple[float, str]]]:
        """How many documents match, and the best ``size`` of them (score, id)."""
        docs = self.docs.get(index, {})
        if "ids" in query:
            found = [(1.0, i) for i in query["ids"]["values"] if i in docs]
            return len(found), found[:size]
        if "multi_match" in query:
            text, fields = query["multi_match"]["query"], query["multi_match"]["fields"]
        else:
            ((fld, spec),) = query["match"].items()
            text, fields = spec["query"] if isinstance(spec, dict) else spec, [fld]
        n = max(1, len(docs))
        ids, postings = self._analysed(index, tuple(fields))
        scores = np.zeros(len(ids))
        for t in _terms(text):
            if t in postings:
                at, ws = postings[t]
                scores[at] += ws * math.log(1 + n / (1 + len(at)))
        hit = np.flatnonzero(scores > 0)
        if len(hit) > size > 0:  # the best size, and every tie at the cut (ids break ties)
            kth = np.partition(scores[hit], len(hit) - size)[len(hit) - size]
            best = hit[scores[hit] >= kth]
        else:
            best = hit if size > 0 else hit[:0]
        ranked = sorted(((float(scores[i]), ids[i]) for i in best), key=lambda x: (-x[0], x[1]))
        return len(hit), ranked[:size]

    def _search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        err = self.fail_item(body)
        if err is not None:
            return {
                "error": {"type": "search_phase_execution_exception", "reason": err},
                "status": 500,
            }
        index = self.aliases.get(index, index)
        if index not in self.docs:
            return {"error": {"type": "index_not_found_exception", "reason": index}, "status": 404}
        total, ranked = self._score(index, body["query"], body.get("size", 10))
        src_fields = body.get("_source")
        hits = []
        for score, doc_id in ranked:
            src = self.docs[index][doc_id]
            if isinstance(src_fields, list):
                src = {k: v for k, v in src.items() if k in src_fields}
            hits.append({"_index": index, "_id": doc_id, "_score": score, "_source": src})
        return {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "status": 200,
            "hits": {
                "total": {"value": total, "relation": "eq"},
                "max_score": ranked[0][0] if ranked else None,
                "hits": hits,
            },
        } | (self.item_extra(body) or {})

    # --- HTTP -----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/", self.info)
        app.router.add_post("/_msearch", self.msearch)
        app.router.add_post("/{index}/_msearch", self.msearch)
        app.router.add_route("*", "/_bulk", self.bulk)
        app.router.add_post("/{index}/_refresh", self.ok)
        app.router.add_route("*", "/{index}/_count", self.count)
        app.router.add_put("/{index}", self.create_index)
        app.router.add_delete("/{index}", self.delete_index)
        app.router.add_head("/{index}", self.exists)
        app.router.add_get("/{index}/_mapping", self.get_mapping)
        app.router.add_get("/_alias/{name}", self.get_alias)
        app.router.add_post("/_aliases", self.update_aliases)
        app.router.add_get("/_cat/indices", self.cat_indices)
        return app

    @staticmethod
    def _json(payload: Any, status: int = 200) -> web.Response:
        return web.Response(
            body=orjson.dumps(payload),
            status=status,
            headers=HEADERS,
            content_type="application/vnd.elasticsearch+json",
        )

    async def info(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "name": "standin",
                "cluster_name": "standin",
                "version": {"number": "9.0.0"},
                "tagline": "You Know, for Search",
            }
        )

    async def ok(self, request: web.Request) -> web.Response:
        return self._json({"acknowledged": True})

    async def count(self, request: web.Request) -> web.Response:
        index = request.match_info["index"]
        docs = self.docs.get(self.aliases.get(index, index))
        if docs is None:
            return self._json({"error": {"type": "index_not_found_exception"}, "status": 404}, 404)
        return self._json({"count": len(docs)})

    async def create_index(self, request: web.Request) -> web.Response:
        name = request.match_info["index"]
        self.docs.setdefault(name, {})
        raw = await request.read()
        mappings = orjson.loads(raw).get("mappings") if raw else None
        if isinstance(mappings, dict):
            self.mappings[name] = mappings
        return self._json({"acknowledged": True, "index": name})

    async def get_mapping(self, request: web.Request) -> web.Response:
        """The mapping given at creation, else every field seen as ``text`` (what dynamic
        mapping would make of strings); keyed by the concrete index, as Elasticsearch
        answers also through an alias."""
        if self.upstream:
            return await self._forward(request)
        name = request.match_info["index"]
        index = self.aliases.get(name, name)
        if index not in self.docs:
            return self._json({"error": {"type": "index_not_found_exception"}, "status": 404}, 404)
        seen = {f for d in self.docs[index].values() for f in d}
        mappings = self.mappings.get(index) or {
            "properties": {f: {"type": "text"} for f in sorted(seen)}
        }
        return self._json({index: {"mappings": mappings}})

    async def delete_index(self, request: web.Request) -> web.Response:
        names = request.match_info["index"].split(",")
        if any(n not in self.docs for n in names):
            return self._json({"error": {"type": "index_not_found_exception"}, "status": 404}, 404)
        for n in names:
            del self.docs[n]
            self.mappings.pop(n, None)
            self.aliases = {a: i for a, i in self.aliases.items() if i != n}
        return self._json({"acknowledged": True})

    # --- aliases, as far as the alias rebuild (retrieval/elastic/index.py) uses them -----
    async def exists(self, request: web.Request) -> web.Response:
        name = request.match_info["index"]
        return web.Response(status=200 if name in self.docs or name in self.aliases else 404)

    async def get_alias(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.aliases:
            return self._json({"error": f"alias [{name}] missing", "status": 404}, 404)
        return self._json({self.aliases[name]: {"aliases": {name: {}}}})

    async def update_aliases(self, request: web.Request) -> web.Response:
        for action in orjson.loads(await request.read())["actions"]:
            ((kind, args),) = action.items()
            if kind == "add":
                self.aliases[args["alias"]] = args["index"]
            elif kind == "remove" and self.aliases.get(args["alias"]) == args["index"]:
                del self.aliases[args["alias"]]
        return self._json({"acknowledged": True})

    async def cat_indices(self, request: web.Request) -> web.Response:
        return self._json([{"index": n, "docs.count": str(len(d))} for n, d in self.docs.items()])

    async def bulk(self, request: web.Request) -> web.Response:
        self.bulk_calls += 1
        lines = [orjson.loads(x) for x in (await request.read()).splitlines() if x.strip()]
        items = []
        for action, src in zip(lines[::2], lines[1::2], strict=True):
            meta = action["index"]
            self.docs.setdefault(meta["_index"], {})[str(meta["_id"])] = src
            items.append(
                {
                    "index": {
                        "_index": meta["_index"],
                        "_id": meta["_id"],
                        "status": 201,
                        "result": "created",
                    }
                }
            )
        return self._json({"took": 1, "errors": False, "items": items})

    async def msearch(self, request: web.Request) -> web.Response:
        lines = [orjson.loads(x) for x in (await request.read()).splitlines() if x.strip()]
        default_index = request.match_info.get("index")
        pairs = list(zip(lines[::2], lines[1::2], strict=True))
        bodies = [b for _, b in pairs]
        self.msearch_calls.append(bodies)
        self.msearch_headers.append(dict(request.headers))
        wait = self.delay(bodies)
        if wait:
            await asyncio.sleep(wait)
        status = self.fail_status(bodies)
        if status is not None:
            return self._json(
                {"error": {"type": "injected", "reason": "injected failure"}, "status": status},
                status,
            )
        raw = self.malformed(bodies)
        if raw is not None:
            return web.Response(
                body=raw, headers=HEADERS, content_type="application/vnd.elasticsearch+json"
            )
        if self.upstream:
            return await self._forward(request)
        responses = [self._search(h.get("index") or default_index or "", b) for h, b in pairs]
        return self._json({"took": 1, "responses": responses})

    async def _forward(self, request: web.Request) -> web.Response:
        from aiohttp import ClientSession

        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in {"content-type", "accept", "authorization"}
        }
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                f"{self.upstream}{request.rel_url}",
                data=await request.read(),
                headers=headers,
            ) as up,
        ):
            body = await up.read()
            return web.Response(
                body=body,
                status=up.status,
                headers=HEADERS,
                content_type="application/vnd.elasticsearch+json",
            )
