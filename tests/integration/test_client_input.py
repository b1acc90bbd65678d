"""Client input that used to give 500, or was accepted against the contract (issue 27, rows
6 and 9): each is now a 4xx naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient

from rerank.engine import ScoringEngine
from retrieval.embedded.layout import build_lock
from tests.support import ROOT, MakeApp

SCORING = {
    "/v1/search": {"query": "wing"},
    "/v1/rerank": {"query": "wing", "documents": ["a", "b"]},
    "/v2/rerank": {"query": "wing", "documents": ["a", "b"]},
    "/rerank": {"query": "wing", "texts": ["a", "b"]},
}


@pytest.fixture
async def client(make_app: MakeApp, tiny_engine: ScoringEngine) -> TestClient:
    return await make_app(engine_=tiny_engine, budget_ms=60_000)


async def test_return_documents_too_deep_is_422_not_500(client: TestClient) -> None:
    depth = 300  # pydantic-core's serializer gave up at ~255: a 500 with a traceback
    nested = '{"a":' * depth + "1" + "}" * depth
    raw = (
        '{"query": "q", "return_documents": true, "documents": ["plain", {"text": "t", "x": '
        + nested
        + "}]}"
    )
    resp = await client.post("/v1/rerank", data=raw.encode(), headers=JSON)
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"]["code"] == "limit_exceeded" and body["error"]["field"] == "documents[1]"
    shallow = (
        '{"query": "q", "return_documents": true, "documents": [{"text": "t", "x": {"a": 1}}]}'
    )
    ok = await client.post("/v1/rerank", data=shallow.encode(), headers=JSON)
    assert ok.status == 200
    assert (await ok.json())["results"][0]["document"] == {"text": "t", "x": {"a": 1}}


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("path", list(SCORING))
async def test_corrupt_gzip_body_is_400(client: TestClient, path: str) -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    resp = await client.post(path, data=b"\x1f\x8b\x08\x00 this is not gzip", headers=headers)
    assert resp.status == 400, await resp.text()
    if path != "/rerank":  # TEI's own error shape there
        assert (await resp.json())["error"]["code"] == "malformed_body"


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
    ],
)
@pytest.mark.parametrize("path", list(SCORING))
async def test_non_json_content_type_is_415(client: TestClient, path: str, ctype: str) -> None:
    data = orjson.dumps(SCORING[path])
    resp = await client.post(path, data=data, headers={"Content-Type": ctype})
    assert resp.status == 415, await resp.text()


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "application/octet-stream",
    ],
)
async def test_json_and_missing_content_types_are_accepted(
    client: TestClient, ctype: str | None
) -> None:
    headers = {} if ctype is None else {"Content-Type": ctype}
    data = orjson.dumps(SCORING["/v1/rerank"])
    # With no Content-Type given, aiohttp's client would add octet-stream: skip it.
    skip = ["Content-Type"] if ctype is None else []
    resp = await client.post("/v1/rerank", data=data, headers=headers, skip_auto_headers=skip)
    assert resp.status == 200, await resp.text()


async def test_multi_match_fields_false_is_refused(client: TestClient) -> None:
    sub = {"query": {"multi_match": {"query": "wing", "fields": False}}}
    resp = await client.post(
        "/v1/search", data=orjson.dumps({"query": "wing", "subqueries": [sub]}), headers=JSON
    )
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"]["code"] == "unsupported_query" and "fields" in body["error"]["message"]


def test_a_second_index_run_writes_nothing_while_the_first_holds_the_lock(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus" / "stdlib"
    corpus.mkdir(parents=True)
    (corpus / "corpus.jsonl").write_text("sentinel\n")
    env = {**os.environ, "RERANK_LOG_FORMAT": "text"}
    cmd = [sys.executable, "-m", "app", "index", "--default", "--no-embed"]
    with build_lock(corpus):  # a first run, mid-build
        res = subprocess.run(
            [*cmd, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    assert res.returncode == 1 and "another build is running" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert (corpus / "corpus.jsonl").read_text() == "sentinel\n"
