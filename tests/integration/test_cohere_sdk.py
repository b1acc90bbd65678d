"""The real cohere SDK (dev extra) against the service over loopback, as its documentation
says to call it: ``Client`` posts ``/v1/rerank``, ``ClientV2`` posts ``/v2/rerank``. The SDK
is synchronous (httpx): it runs in a thread while the test's loop serves the app. Its API
key is mandatory and sent as ``Authorization: Bearer``: with auth off any key passes, with
auth on only a configured one."""

from __future__ import annotations

import asyncio

import cohere
import pytest
from aiohttp.test_utils import TestClient

from tests.support import MakeApp

DOCS = [
    "Pasta with tomatoes and basil.",
    "The wing lift rises in the propeller slipstream.",
    "Football scores of the weekend.",
]
QUERY = "wing lift in a slipstream"
NO_RETRY = {"max_retries": 0}


def base_url(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_v1_client_reranks_with_and_without_optional_arguments(make_app: MakeApp) -> None:
    client = await make_app()
    co = cohere.Client(base_url=base_url(client), api_key="anything")
    r = await asyncio.to_thread(co.rerank, query=QUERY, documents=DOCS)
    assert r.results[0].index == 1 and len(r.results) == 3
    assert all(isinstance(x.relevance_score, float) for x in r.results)
    assert r.meta is not None
    # Every argument, model and top_n passed as None (sent as JSON null), and an id.
    r = await asyncio.to_thread(
        co.rerank,
        model=None,
        query=QUERY,
        documents=[{"text": DOCS[1], "title": "Wings"}, DOCS[0]],
        top_n=None,
        rank_fields=["text"],
        return_documents=True,
        max_chunks_per_doc=3,
        request_options={"additional_headers": {"X-Request-ID": "sdk-v1"}},
    )
    assert r.id == "sdk-v1"
    assert r.results[0].index == 0 and r.results[0].document is not None
    assert r.results[0].document.text == DOCS[1]
    assert 0 <= r.results[1].relevance_score <= r.results[0].relevance_score <= 1


async def test_v2_client_reranks_as_langchain_and_llama_index_call_it(make_app: MakeApp) -> None:
    client = await make_app()
    co = cohere.ClientV2(base_url=base_url(client), api_key="anything")
    # llama-index CohereRerank: model, top_n. langchain-cohere: top_n, max_tokens_per_doc=None.
    r = await asyncio.to_thread(
        co.rerank, model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=2
    )
    assert r.results[0].index == 1 and len(r.results) == 2
    r = await asyncio.to_thread(
        co.rerank,
        model="rerank-v3.5",
        query=QUERY,
        documents=DOCS,
        top_n=None,
        max_tokens_per_doc=None,
        priority=1,
        request_options={"additional_headers": {"X-Request-ID": "sdk-v2"}},
    )
    assert r.id == "sdk-v2" and len(r.results) == 3
    scores = [x.relevance_score for x in r.results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert getattr(r, "model", None) not in (None, "rerank-v3.5")  # the model that scored
    # The async client sends the same request.
    aco = cohere.AsyncClientV2(base_url=base_url(client), api_key="anything")
    r2 = await aco.rerank(model="m", query=QUERY, documents=DOCS, max_tokens_per_doc=512)
    assert [x.index for x in r2.results] == [x.index for x in r.results]


async def test_with_api_keys_the_sdk_key_is_the_bearer_key(make_app: MakeApp) -> None:
    client = await make_app(api_keys="k-one,k-two")
    url = base_url(client)
    r = await asyncio.to_thread(
        cohere.ClientV2(base_url=url, api_key="k-two").rerank,
        model="m",
        query=QUERY,
        documents=DOCS,
    )
    assert len(r.results) == 3
    r1 = await asyncio.to_thread(
        cohere.Client(base_url=url, api_key="k-one").rerank, query=QUERY, documents=DOCS
    )
    assert len(r1.results) == 3
    with pytest.raises(cohere.UnauthorizedError) as err:
        await asyncio.to_thread(
            cohere.ClientV2(base_url=url, api_key="wrong").rerank,
            model="m",
            query=QUERY,
            documents=DOCS,
            request_options=NO_RETRY,
        )
    assert err.value.status_code == 401
    assert err.value.body["error"]["code"] == "unauthorized"


async def test_past_the_server_limit_the_sdk_gets_a_503_it_can_retry(make_app: MakeApp) -> None:
    client = await make_app(rerank_max_ms=0.001)
    co = cohere.ClientV2(base_url=base_url(client), api_key="anything")
    with pytest.raises(cohere.ServiceUnavailableError) as err:
        await asyncio.to_thread(
            co.rerank,
            model="m",
            query=QUERY,
            documents=[f"unseen text {i}" for i in range(5)],
            request_options=NO_RETRY,
        )
    assert err.value.headers is not None and err.value.headers["retry-after"] == "1"
    assert err.value.body["error"]["code"] == "over_time_limit"
