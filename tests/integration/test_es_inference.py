"""Elasticsearch as a caller, replayed: the README's ``PUT _inference/rerank/...`` bodies
turned into the exact requests Elasticsearch sends (``tests/es_inference.py``, a port of
its ``custom`` and ``hugging_face`` services), sent to the service over loopback, and the
answers parsed as Elasticsearch parses them, down to the ``text_similarity_reranker``
retriever's check: one score per document it sent, no nulls, indexes mapped back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests import es_inference as es
from tests.support import MakeApp

README = Path(__file__).resolve().parents[2] / "README.md"
README_HOST = "http://127.0.0.1:8080"
KEY = "s3cret"
QUERY = 'capital of "France"'
DOCS = [
    "Bananas are yellow.",
    "Paris is the capital of France.",
    "Ça va\nbien",
    "Berlin is the capital of Germany.",
]


def readme_bodies() -> dict[str, dict[str, Any]]:
    """Every ``PUT _inference/rerank/<id>`` block in the README, by id."""
    blocks = re.findall(r"```json\nPUT _inference/rerank/(\S+)\n(.*?)```", README.read_text(), re.S)
    return {name: json.loads(body) for name, body in blocks}


@pytest.fixture(scope="module")
def bodies() -> dict[str, dict[str, Any]]:
    found = readme_bodies()
    assert set(found) == {"local-rerank", "local-rerank-hf"}
    return found


async def send(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.read()


def base(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def reference(client: TestClient, docs: list[str]) -> list[float]:
    """Each document's relevance by its index, from the service's own v2 answer."""
    resp = await client.post(
        "/v2/rerank",
        json={"query": QUERY, "documents": docs},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    out = [0.0] * len(docs)
    for r in (await resp.json())["results"]:
        out[r["index"]] = r["relevance_score"]
    return out


def custom_call(
    settings: dict[str, Any], url: str, docs: list[str], **kw: Any
) -> tuple[str, dict[str, str], bytes]:
    return es.custom_request(
        url=url,
        headers=settings["headers"],
        request_template=settings["request"],
        query=QUERY,
        documents=docs,
        secret_parameters={**settings["secret_parameters"], "api_key": KEY},
        **kw,
    )


@pytest.mark.parametrize("route", ["/v2/rerank", "/v1/rerank"])
async def test_custom_service_as_the_retriever_calls_it(
    make_app: MakeApp, bodies: dict[str, Any], route: str
) -> None:
    """40 documents nobody scored before, under the 20 ms search budget: the issue's case
    where every score came back null and Elasticsearch rejected the answer."""
    client = await make_app(api_keys=KEY, budget_ms=20.0)
    settings = bodies["local-rerank"]["service_settings"]
    assert settings["url"] == README_HOST + "/v2/rerank"
    assert "${top_n}" not in settings["request"]
    docs = [*DOCS, *(f"{route} passage {i} on capitals and rivers {i * 31}" for i in range(36))]
    url, headers, body = custom_call(settings, base(client) + route, docs)
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body.startswith(
        b'{"model": "default", "query": "capital of \\"France\\"", "documents": ['
    )
    status, answer = await send(url, headers, body)
    assert status == 200, answer
    ranked = es.custom_parse_rerank(answer, **settings["response"]["json_parser"])
    scores = es.text_similarity_scores(ranked, len(docs))
    assert scores == pytest.approx(await reference(client, docs), abs=1e-6)
    assert max(range(len(docs)), key=scores.__getitem__) == 1  # Paris, mapped back by index
    # A direct `POST _inference` call with top_n: the template leaves it out, all come back.
    url, headers, body = custom_call(settings, url, docs, top_n=2, return_documents=True)
    status, answer = await send(url, headers, body)
    assert (
        status == 200
        and len(es.custom_parse_rerank(answer, **settings["response"]["json_parser"])) == 40
    )


async def test_custom_template_with_a_budget_still_parses_when_it_cuts(
    make_app: MakeApp, bodies: dict[str, Any]
) -> None:
    client = await make_app(api_keys=KEY)
    settings = dict(bodies["local-rerank"]["service_settings"])
    settings["request"] = settings["request"][:-1] + ', "budget_ms": 0.001}'
    docs = [f"budget passage {i} about rivers" for i in range(10)]
    url, headers, body = custom_call(settings, base(client) + "/v2/rerank", docs)
    status, answer = await send(url, headers, body)
    assert status == 200 and json.loads(answer)["meta"]["partial"] is True
    ranked = es.custom_parse_rerank(answer, **settings["response"]["json_parser"])
    assert es.text_similarity_scores(ranked, 10) == [0.0] * 10


def test_a_template_with_top_n_fails_every_retriever_search() -> None:
    """Why the README leaves ``${top_n}`` out: the retriever passes none."""
    with pytest.raises(ValueError, match=r"Found placeholder \[\$\{top_n\}\]"):
        es.custom_request(
            url="http://x/v2/rerank",
            headers={},
            request_template='{"query": ${query}, "documents": ${input}, "top_n": ${top_n}}',
            query=QUERY,
            documents=DOCS,
        )


async def test_hugging_face_service_against_the_tei_route(
    make_app: MakeApp, bodies: dict[str, Any]
) -> None:
    client = await make_app(api_keys=KEY)
    settings = bodies["local-rerank-hf"]["service_settings"]
    assert settings["url"] == README_HOST + "/rerank"
    url = base(client) + "/rerank"
    # The retriever: neither return_text nor top_n.
    url, headers, body = es.hugging_face_request(url=url, api_key=KEY, query=QUERY, documents=DOCS)
    assert body == es.es_json({"texts": DOCS, "query": QUERY}).encode()
    status, answer = await send(url, headers, body)
    assert status == 200, answer
    ranked = es.hugging_face_parse_rerank(answer)
    scores = es.text_similarity_scores(ranked, len(DOCS))
    assert scores == pytest.approx(await reference(client, DOCS), abs=1e-6)
    # A direct call with return_documents and top_n: texts come back, Elasticsearch cuts.
    url, headers, body = es.hugging_face_request(
        url=url, api_key=KEY, query=QUERY, documents=DOCS, return_documents=True, top_n=2
    )
    status, answer = await send(url, headers, body)
    top = es.hugging_face_parse_rerank(answer, top_n=2)
    assert status == 200 and len(top) == 2 and top[0][0] == 1
    assert all(text == DOCS[i] for i, _, text in top)


async def test_hugging_face_error_messages_are_shown_not_undefined(make_app: MakeApp) -> None:
    client = await make_app(api_keys=KEY, rerank_max_ms=0.001)
    url = base(client) + "/rerank"
    _, headers, body = es.hugging_face_request(
        url=url, api_key="wrong", query=QUERY, documents=DOCS
    )
    status, answer = await send(url, headers, body)
    assert status == 401 and "API key" in es.hugging_face_error(answer)
    _, headers, body = es.hugging_face_request(
        url=url, api_key=KEY, query=QUERY, documents=[f"new text {i}" for i in range(4)]
    )
    status, answer = await send(url, headers, body)
    # 503 is what Elasticsearch's hugging_face handler retries.
    assert status == 503 and "over the server's limit" in es.hugging_face_error(answer)
