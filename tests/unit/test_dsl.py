"""Issue 12, search side, without sockets: query DSL sub-queries (canonical dedup, errors
named per sub-query, the breaker left alone), the configured field names (query bodies,
hit parsing, the start-up mapping check), and never an empty answer when nothing did."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from app.openapi import build_openapi
from retrieval.breaker import CircuitBreaker, GuardedBackend, State
from retrieval.dedup import dedup
from retrieval.elastic.mapping import check_fields
from retrieval.elastic.search import _hit, _parse, query_body
from retrieval.embedded.search import EmbeddedBackend
from retrieval.errors import (
    BackendUnavailable,
    IndexMismatch,
    InvalidQuery,
    RetrievalError,
    RetrievalTimeout,
    UnsupportedQuery,
)
from retrieval.fanout import RetrievalRun
from retrieval.types import Hit, SubQuery

BOOL = {"bool": {"must": [{"match": {"body": "wing"}}], "filter": [{"term": {"lang": "en"}}]}}
BOOL_REORDERED = {
    "bool": {"filter": [{"term": {"lang": "en"}}], "must": [{"match": {"body": "wing"}}]}
}


def test_dsl_dedup_ignores_key_order_and_keeps_each_origin() -> None:
    qs = [SubQuery.dsl(BOOL), SubQuery.match("wing"), SubQuery.dsl(BOOL_REORDERED)]
    d = dedup(qs)
    assert len(d.unique) == 2 and d.origins == [[0, 2], [1]]
    assert d.unique[0].dsl_query() == BOOL
    assert " " not in d.unique[0].text  # canonical: no whitespace
    # Different values (not just order) stay different queries.
    other = {"bool": {"must": [{"match": {"body": "wing"}}], "filter": [{"term": {"lang": "fr"}}]}}
    assert SubQuery.dsl(other) != SubQuery.dsl(BOOL)


def test_query_bodies_use_the_configured_fields_and_pass_dsl_as_an_object() -> None:
    fields = ("name", "meta.body")
    plain = query_body(SubQuery.match("Wing"), 5, fields=fields)
    assert plain["query"] == {
        "multi_match": {"query": "wing", "fields": ["name", "meta.body"], "type": "most_fields"}
    }
    assert plain["_source"] == ["name", "meta.body"]
    on_title = query_body(SubQuery.match("wing", "title"), 5, fields=fields)
    assert on_title["query"] == {"match": {"name": {"query": "wing"}}}
    on_text = query_body(SubQuery.match("wing", "text"), 5, fields=fields)
    assert on_text["query"] == {"match": {"meta.body": {"query": "wing"}}}
    dsl = query_body(SubQuery.dsl(BOOL_REORDERED), 7, fields=fields)
    assert dsl == {"query": BOOL, "size": 7, "_source": ["name", "meta.body"]}


def test_hits_read_the_configured_fields_and_survive_missing_ones() -> None:
    fields = ("name", "meta.body")
    h = _hit(
        {"_id": 1, "_score": 2.0, "_source": {"name": "N", "meta": {"body": "B"}}}, None, fields
    )
    assert (h.doc_id, h.title, h.text, h.score) == ("1", "N", "B", 2.0)
    bare = _hit({"_id": "x", "_score": 1.0, "_source": {"name": ["a", "b"]}}, None, fields)
    assert (bare.title, bare.text) == ("a b", "")
    flat = _hit({"_id": "y", "_source": {"meta": "not an object"}}, None, fields)
    assert flat.text == "" and flat.score == 0.0


def _item_error(kind: str, reason: str, status: int = 400) -> dict[str, Any]:
    err = {"type": kind, "reason": reason, "root_cause": [{"type": kind, "reason": reason}]}
    return {"error": err, "status": status}


def test_a_400_item_is_the_callers_error_only_for_dsl() -> None:
    item = _item_error("parsing_exception", "unknown query [no_such]")
    got = _parse(item, dsl=True)
    assert isinstance(got, InvalidQuery) and "unknown query [no_such]" in str(got)
    ours = _parse(item, dsl=False)  # a body we built: our bug, a lost part
    assert isinstance(ours, RetrievalError) and not isinstance(ours, InvalidQuery)
    server = _parse(_item_error("search_phase_execution_exception", "boom", 500), dsl=True)
    assert not isinstance(server, InvalidQuery)


MAPPING = {
    "docs-1": {
        "mappings": {
            "properties": {
                "name": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
                "lang": {"type": "keyword"},
                "year": {"type": "integer"},
                "meta": {"properties": {"body": {"type": "text"}}},
            }
        }
    }
}


@pytest.mark.parametrize("fields", [("name", "meta.body"), ("lang", "name")])
def test_field_check_accepts_text_fields_through_an_alias(fields: tuple[str, str]) -> None:
    check_fields(MAPPING, "docs", fields)  # asked as "docs", answered keyed "docs-1"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (("name", "body"), "field 'body' does not exist (fields there: lang, meta, name, year)"),
        (("name", "year"), "field 'year' is of type 'integer', not text"),
        (("name", "meta"), "field 'meta' is of type 'object'"),
        (("name.raw", "name"), "field 'name.raw' is a multi-field"),
        (("name", "meta.text"), "field 'meta.text' does not exist (fields there: body)"),
    ],
)
def test_field_check_names_the_field_and_the_index(fields: tuple[str, str], says: str) -> None:
    with pytest.raises(IndexMismatch) as err:
        check_fields(MAPPING, "docs", fields)
    assert says in str(err.value) and "'docs' (index 'docs-1')" in str(err.value)


class Scripted:
    """A backend answering each query by a rule; ``hang`` queries never answer."""

    name = "scripted"

    def __init__(self, answer: Any = None, hang: bool = False) -> None:
        self.answer, self.hang, self.calls = answer, hang, 0

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        return [self.answer(q) for q in queries]

    async def ping(self) -> bool:
        return True

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def _consume_until(run: RetrievalRun, seconds: float) -> list[Any]:
    got: list[Any] = []
    with contextlib.suppress(TimeoutError):
        async with contextlib.aclosing(run.stream()) as stream, asyncio.timeout(seconds):
            async for chunk in stream:
                got.append(chunk)
    return got


async def test_a_stream_closed_before_any_answer_is_a_timeout_not_empty() -> None:
    """The race behind the flaky unreachable-cluster test, forced: the deadline closes the
    stream while every chunk is still out. Nothing may come back as an empty success."""
    run = RetrievalRun(Scripted(hang=True), [SubQuery.match("a"), SubQuery.match("b")], 3, 2)
    assert await _consume_until(run, 0.05) == []
    assert [p.error for p in run.report.lost] == ["no answer before the deadline"] * 2
    with pytest.raises(RetrievalTimeout):
        run.raise_if_unanswered()


async def test_an_empty_answer_is_still_an_answer() -> None:
    run = RetrievalRun(Scripted(lambda q: []), [SubQuery.match("nothing")], 3, 1)
    assert len(await _consume_until(run, 5)) == 1
    run.raise_if_unanswered()  # no hits, but retrieval worked: a 200 with no hits is right


async def test_all_lost_not_to_time_is_unavailable() -> None:
    run = RetrievalRun(
        Scripted(lambda q: RetrievalError("status 500: boom")), [SubQuery.match("a")], 3, 1
    )
    with pytest.raises(BackendUnavailable) as err:
        _ = [c async for c in run.stream()]
    assert not isinstance(err.value, RetrievalTimeout) and "boom" in str(err.value)


async def test_a_rejected_dsl_query_is_named_and_leaves_the_breaker_closed() -> None:
    def answer(q: SubQuery) -> list[Hit] | RetrievalError:
        if q.kind == "dsl":
            return InvalidQuery("Elasticsearch rejected the query: parsing_exception: x")
        return [Hit("d", "t", "x", 1.0)]

    breaker = CircuitBreaker(threshold=1, cooldown_s=60)
    guarded = GuardedBackend(Scripted(answer), breaker)
    qs = [SubQuery.match("q"), SubQuery.match("w"), SubQuery.dsl({"no_such": {}})]
    labels = ["query", "subqueries[0]", "subqueries[1]"]
    for _ in range(3):
        run = RetrievalRun(guarded, qs, 3, 1, labels=labels)
        with pytest.raises(InvalidQuery) as err:
            _ = [c async for c in run.stream()]
        assert err.value.field == "subqueries[1]"
        assert str(err.value).startswith("subqueries[1]: Elasticsearch rejected the query")
    assert breaker.state is State.CLOSED and breaker.opened == 0


async def _embedded_ids(backend: EmbeddedBackend, query: dict[str, Any]) -> list[str] | str:
    (got,) = await backend.search_chunk([SubQuery.dsl(query)], 10)
    return str(got) if isinstance(got, RetrievalError) else sorted(h.doc_id for h in got)


# (query, ids it finds in SMALL_CORPUS): also checked against noida-db, a real
# Elasticsearch-API engine, in tests/integration/test_own_index.py.
SUBSET_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"match": {"text": "flows"}}, ["heat", "panel"]),  # analysed: flows -> flow
    ({"match": {"title": {"query": "wing boundary", "operator": "and"}}}, []),
    ({"multi_match": {"query": "flat", "fields": ["title^2", "text"]}}, ["boundary", "panel"]),
    (
        {"multi_match": {"query": "flows", "fields": ["text"], "type": "most_fields"}},
        ["heat", "panel"],
    ),
    ({"term": {"text": "flutter"}}, ["panel"]),
    ({"terms": {"_id": ["pasta", "nope", "wing"]}}, ["pasta", "wing"]),
    ({"ids": {"values": ["football"]}}, ["football"]),
    ({"match_all": {}}, ["boundary", "football", "heat", "panel", "pasta", "wing"]),
    (
        {
            "bool": {
                "should": [{"match": {"text": "flow"}}, {"match": {"text": "wing"}}],
                "filter": {"terms": {"_id": ["heat", "wing", "pasta"]}},
                "must_not": [{"match": {"text": "hypersonic"}}],
            }
        },
        ["pasta", "wing"],  # as in ES: next to a filter, `should` only scores
    ),
    (
        {"bool": {"must_not": {"match": {"text": "flow"}}}},
        ["boundary", "football", "pasta", "wing"],
    ),
]


@pytest.mark.parametrize(("query", "ids"), SUBSET_CASES)
async def test_the_embedded_index_answers_a_dsl_subset(
    small_backend: EmbeddedBackend, query: dict[str, Any], ids: list[str]
) -> None:
    assert await _embedded_ids(small_backend, query) == ids


async def _embedded_scores(backend: EmbeddedBackend, query: dict[str, Any]) -> dict[str, float]:
    (got,) = await backend.search_chunk([SubQuery.dsl(query)], 10)
    assert not isinstance(got, RetrievalError)
    return {h.doc_id: h.score for h in got}


async def test_multi_match_types_add_or_take_the_best_field(small_backend: EmbeddedBackend) -> None:
    """``most_fields`` (what the main query sends to Elasticsearch) adds the fields' scores,
    ``best_fields`` (ES's default) keeps the better one: the embedded subset does both."""
    title = await _embedded_scores(small_backend, {"match": {"title": "boundary layer flat"}})
    text = await _embedded_scores(small_backend, {"match": {"text": "boundary layer flat"}})
    both = {"query": "boundary layer flat", "fields": ["title", "text"]}
    most = await _embedded_scores(small_backend, {"multi_match": {**both, "type": "most_fields"}})
    best = await _embedded_scores(small_backend, {"multi_match": both})
    assert set(title) & set(text), "the case needs a document matching in both fields"
    for doc in set(title) | set(text):
        parts = [title.get(doc, 0.0), text.get(doc, 0.0)]
        assert most[doc] == pytest.approx(sum(parts), rel=1e-5)
        assert best[doc] == pytest.approx(max(parts), rel=1e-5)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"range": {"year": {"gte": 1}}}, "does not support `range` queries (it supports: bool"),
        ({"match": {"lang": "en"}}, "has no field 'lang'"),
        (
            {"bool": {"must": [{"match_all": {}}], "minimum_should_match": 1}},
            "'minimum_should_match' in `bool`",
        ),
        (
            {"multi_match": {"query": "x", "type": "cross_fields"}},
            "best_fields and most_fields only",
        ),
    ],
)
async def test_the_embedded_index_names_what_it_does_not_support(
    small_backend: EmbeddedBackend, query: dict[str, Any], says: str
) -> None:
    got = await small_backend.search_chunk(
        [SubQuery.match("wing"), SubQuery.dsl(query), SubQuery.by_ids(["pasta"])], 3
    )
    assert isinstance(got[0], list) and got[0][0].doc_id == "wing"
    assert isinstance(got[1], UnsupportedQuery) and says in str(got[1]), got[1]
    assert isinstance(got[2], list) and [h.doc_id for h in got[2]] == ["pasta"]


def test_openapi_says_exactly_one_sub_query_kind() -> None:
    defs = build_openapi("t")["components"]["schemas"]
    items = defs["SearchRequest"]["properties"]["subqueries"]["items"]
    kinds = items["oneOf"]
    assert kinds[0]["type"] == "string" and len(kinds) == 4
    required = {}
    for ref in kinds[1:]:
        model = defs[ref["$ref"].rsplit("/", 1)[1]]
        assert model["additionalProperties"] is False
        required[tuple(model["required"])] = set(model["properties"])
    assert required == {("text",): {"text", "field"}, ("ids",): {"ids"}, ("query",): {"query"}}
    assert defs["SearchRequest"]["properties"]["match_query"]["default"] is True
