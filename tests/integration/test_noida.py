"""The noida-db fixture itself: a real Elasticsearch-API engine (written by others) answers
the unmodified client, and each test gets a fresh index that is deleted afterwards."""

from __future__ import annotations

import json
import urllib.request

from elasticsearch import AsyncElasticsearch


async def test_alias_swap_and_msearch(noida_url: str, noida_index: str) -> None:
    es = AsyncElasticsearch(noida_url, request_timeout=10)
    try:
        assert (await es.info())["version"]["number"]
        old, new = f"{noida_index}-1", f"{noida_index}-2"
        mapping = {
            "properties": {
                "title": {"type": "text", "analyzer": "english"},
                "lang": {"type": "keyword"},
            }
        }
        for name, title in ((old, "running shoes"), (new, "boundary layers")):
            await es.indices.create(index=name, mappings=mapping)
            await es.index(
                index=name, id="a", document={"title": title, "lang": "en"}, refresh=True
            )
        await es.indices.update_aliases(actions=[{"add": {"index": old, "alias": noida_index}}])
        await es.indices.update_aliases(
            actions=[
                {"add": {"index": new, "alias": noida_index}},
                {"remove_index": {"index": old}},
            ]
        )
        query = {
            "bool": {"must": [{"match": {"title": "layer"}}], "filter": [{"term": {"lang": "en"}}]}
        }
        r = await es.msearch(
            searches=[
                {"index": noida_index},
                {"query": query},
                {"index": noida_index},
                {"query": {"no_such": {}}},
            ]
        )
        ok, bad = r["responses"]
        assert [h["_id"] for h in ok["hits"]["hits"]] == ["a"]
        assert bad["status"] == 400 and bad["error"]["type"] == "parsing_exception"
        assert not await es.indices.exists(index=old)
    finally:
        await es.close()


def test_previous_test_left_no_index(noida_url: str) -> None:
    with urllib.request.urlopen(f"{noida_url}/_cat/indices?format=json") as resp:
        assert json.loads(resp.read()) == []
