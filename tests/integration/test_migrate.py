"""Issue 22 part 3: a team's index is never rewritten by us. ``app index`` refuses an index
it did not create; ``app migrate`` copies a team's index (mapping, settings, every field)
with vectors behind the same name in one ``_aliases`` call. Against noida-db (a real
Elasticsearch-API engine), through the real client and the real command line; and the
README's own-index examples run as written."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from elasticsearch import AsyncElasticsearch

from app.config import Config
from rerank.engine import ScoringEngine
from retrieval.config import RetrievalConfig
from retrieval.elastic.index import NotOurIndex
from retrieval.elastic.indexer import ElasticIndexer
from retrieval.elastic.search import make_client
from retrieval.factory import open_backend
from retrieval.types import Document
from retrieval.vectors import stored_tag
from tests.support import ROOT, SMALL_CORPUS, MakeApp

FRENCH = {"pasta", "football"}
SETTINGS = {"analysis": {"analyzer": {"plain": {"type": "standard", "stopwords": "_english_"}}}}
MAPPING = {
    "_meta": {"owner": "search-team"},
    "properties": {
        "headline": {"type": "text", "analyzer": "english"},
        "body": {"type": "text", "analyzer": "plain"},
        "lang": {"type": "keyword"},
        "published": {"type": "date"},
    },
}
FILTER_FR = {
    "bool": {"must": {"match": {"body": "pasta team"}}, "filter": {"term": {"lang": "fr"}}}
}
SINCE_2021 = {"range": {"published": {"gte": "2021-01-01"}}}


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**clean, **env},
    )


def _model(model_dir: Path) -> dict[str, str]:
    """The session engine's settings as env vars (the commands' text stays as written)."""
    return {
        "RERANK_MODEL_DIR": str(model_dir),
        "RERANK_PRECISION": "fp32",
        "RERANK_MAX_LENGTH": "256",
    }


async def _create(es: AsyncElasticsearch, physical: str, alias: str | None) -> None:
    await es.indices.create(index=physical, settings=SETTINGS, mappings=MAPPING)
    for i, d in enumerate(SMALL_CORPUS):
        src = {
            "headline": d.title,
            "body": d.text,
            "lang": "fr" if d.doc_id in FRENCH else "en",
            "published": f"{2019 + i}-06-01",
        }
        await es.index(index=physical, id=d.doc_id, document=src)
    await es.indices.refresh(index=physical)
    if alias:
        await es.indices.put_alias(index=physical, name=alias)


@pytest.fixture
async def team(noida_url: str, noida_index: str) -> AsyncIterator[AsyncElasticsearch]:
    """The team's index: ``NAME-1`` behind alias ``NAME``, fields of its own."""
    es = make_client(noida_url, timeout_s=30)
    try:
        await _create(es, f"{noida_index}-1", noida_index)
        yield es
    finally:
        await es.close()


def _flags(url: str, index: str) -> list[str]:
    return ["--es-url", url, "--es-index", index, "--es-title-field", "headline",
            "--es-text-field", "body"]  # fmt: skip


async def _physical(es: AsyncElasticsearch, alias: str) -> str:
    (name,) = (await es.indices.get_alias(name=alias)).body
    return str(name)


async def test_app_index_refuses_a_team_index(
    noida_url: str, noida_index: str, team: AsyncElasticsearch, tmp_path: Path
) -> None:
    cfg = RetrievalConfig(es_url=noida_url, es_index=noida_index)
    with pytest.raises(NotOurIndex) as err:
        await ElasticIndexer(cfg).index([Document("x", "t", "x")], 1, progress=False)
    assert f"refusing to replace index '{noida_index}' (index '{noida_index}-1')" in str(err.value)
    assert "lang, published" in str(err.value) and "python -m app migrate" in str(err.value)

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "x", "title": "t", "text": "x"}\n')
    proc = await asyncio.to_thread(
        _cli, "index", "--dataset", str(tmp_path), "--no-embed", "--es-url", noida_url,
        "--es-index", noida_index,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert line.startswith("python -m app index: error: refusing to replace index")
    assert await _physical(team, noida_index) == f"{noida_index}-1"  # nothing changed
    assert (await team.count(index=noida_index))["count"] == len(SMALL_CORPUS)
    props = (await team.indices.get_mapping(index=noida_index)).body[f"{noida_index}-1"]
    assert props["mappings"]["properties"]["lang"] == {"type": "keyword"}

    # A concrete index of theirs is refused the same way (not "migrate with _reindex").
    await _create(team, f"{noida_index}-plain", None)
    cfg = RetrievalConfig(es_url=noida_url, es_index=f"{noida_index}-plain")
    with pytest.raises(NotOurIndex):
        await ElasticIndexer(cfg).index([Document("x", "t", "x")], 1, progress=False)


async def test_migrate_copies_everything_of_theirs_and_adds_vectors(
    noida_url: str,
    noida_index: str,
    team: AsyncElasticsearch,
    default_model_dir: Path,
    engine: ScoringEngine,
    make_app: MakeApp,
    tmp_path: Path,
) -> None:
    before = (await team.indices.get_mapping(index=noida_index)).body[f"{noida_index}-1"]
    proc = await asyncio.to_thread(
        _cli, "migrate", *_flags(noida_url, noida_index), **_model(default_model_dir)
    )
    assert proc.returncode == 0, proc.stderr
    new = await _physical(team, noida_index)
    assert re.fullmatch(rf"{noida_index}-\d{{13}}", new), new
    assert f"copied {len(SMALL_CORPUS)} documents from '{noida_index}-1' into '{new}'" in (
        proc.stdout
    )
    got = (await team.indices.get_mapping(index=new)).body[new]["mappings"]
    for name, spec in before["mappings"]["properties"].items():
        assert got["properties"][name] == spec, name  # type, analyzer: theirs, unchanged
    assert got["properties"]["embedding_f16"] == {"type": "binary"}
    assert got["properties"]["embedding_tag"] == {"type": "keyword"}
    knn = got["properties"]["embedding"]
    assert knn["type"] == "dense_vector" and knn["dims"] == 384 and knn["index"] is True
    assert got["_meta"]["owner"] == "search-team"
    settings = (await team.indices.get_settings(index=new)).body[new]["settings"]["index"]
    assert settings["analysis"] == SETTINGS["analysis"]
    assert settings["provided_name"] == new  # not the source's
    tag = stored_tag(str(engine.vector_tag("title_text")), ("headline", "body"))
    sources = [(await team.get(index=noida_index, id=d.doc_id))["_source"] for d in SMALL_CORPUS]
    assert {s["embedding_tag"] for s in sources} == {tag}
    assert {s["lang"] for s in sources} == {"en", "fr"}
    # The old index is kept (theirs to delete), untouched.
    assert (await team.count(index=f"{noida_index}-1"))["count"] == len(SMALL_CORPUS)

    # Their filters still hit, and searches use the stored vectors.
    cfg = Config().override(es_url=noida_url, es_index=noida_index, es_title_field="headline",
                            es_text_field="body")  # fmt: skip
    backend = open_backend(cfg.retrieval_config(), engine.vector_tag("title_text"))
    client = await make_app(backend=backend, config=cfg, budget_ms=60_000)
    for dsl, want in ((FILTER_FR, FRENCH), (SINCE_2021, {d.doc_id for d in SMALL_CORPUS[2:]})):
        resp = await client.post(
            "/v1/search",
            data=orjson.dumps(
                {"query": "pasta", "match_query": False, "subqueries": [{"query": dsl}]}
            ),
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert {h["id"] for h in body["hits"]} == want
        assert body["vectors"]["index"] == body["scored"] > 0
    await backend.close()

    # What migrate made is still theirs: `app index` refuses it too.
    (tmp_path / "corpus.jsonl").write_text('{"_id": "x", "title": "t", "text": "x"}\n')
    proc = await asyncio.to_thread(
        _cli, "index", "--dataset", str(tmp_path), "--no-embed", "--es-url", noida_url,
        "--es-index", noida_index,
    )  # fmt: skip
    assert proc.returncode == 2 and "refusing to replace" in proc.stderr


async def test_migrate_replaces_a_concrete_index_only_when_told(
    noida_url: str, noida_index: str, default_model_dir: Path
) -> None:
    es = make_client(noida_url, timeout_s=30)
    try:
        await _create(es, noida_index, None)
        await es.indices.put_alias(index=noida_index, name=f"{noida_index}-read")
        flags = _flags(noida_url, noida_index)
        proc = await asyncio.to_thread(_cli, "migrate", "--no-embed", *flags)
        assert proc.returncode == 2, proc.stderr
        assert "--replace-index" in proc.stderr and "Nothing was changed" in proc.stderr
        assert (await es.indices.exists_alias(name=noida_index)).meta.status == 404

        proc = await asyncio.to_thread(
            _cli, "migrate", "--replace-index", *flags, **_model(default_model_dir)
        )
        assert proc.returncode == 0, proc.stderr
        new = await _physical(es, noida_index)  # NAME is now an alias of the copy
        assert (await _physical(es, f"{noida_index}-read")) == new  # their alias follows
        assert (await es.count(index=noida_index))["count"] == len(SMALL_CORPUS)
        assert "was replaced by that alias" in proc.stdout
    finally:
        await es.close()


def test_migrate_needs_elasticsearch() -> None:
    proc = _cli("migrate", "--no-embed")
    assert proc.returncode == 2 and "set --es-url" in proc.stderr


# --- the README's own-index section, as written -------------------------------------------

README = (ROOT / "README.md").read_text()
SECTION = README.split("## Use your own Elasticsearch index", 1)[1].split("\n## ", 1)[0]


def _commands() -> list[list[str]]:
    """The ``python -m app`` commands of the section's ``sh`` blocks, in order."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", SECTION, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith(".venv/bin/python -m app "):
                out.append(line.split()[3:])
    return out


def _readme_index(es: AsyncElasticsearch, name: str) -> Any:
    """The index the README's examples talk about: fields name, body, lang, price."""

    async def make() -> None:
        await es.indices.create(
            index=f"{name}-v1",
            mappings={"properties": {"name": {"type": "text"}, "body": {"type": "text"},
                                     "lang": {"type": "keyword"}, "price": {"type": "float"}}},
        )  # fmt: skip
        for i, d in enumerate(SMALL_CORPUS):
            src = {"name": d.title, "body": d.text, "lang": "en", "price": 50 + 40 * i}
            await es.index(index=f"{name}-v1", id=d.doc_id, document=src)
        await es.index(index=f"{name}-v1", id="sku-123", document={"name": "trail shoes"})
        await es.indices.refresh(index=f"{name}-v1")
        await es.indices.put_alias(index=f"{name}-v1", name=name)

    return make()


async def test_the_readme_own_index_examples_run_as_written(
    noida_url: str, noida_index: str, default_model_dir: Path, make_app: MakeApp
) -> None:
    commands = _commands()
    assert [c[0] for c in commands] == ["serve", "migrate", "embed"], commands
    es = make_client(noida_url, timeout_s=30)
    try:
        await _readme_index(es, noida_index)

        def as_written(args: list[str]) -> list[str]:
            joined = " ".join(args).replace("http://localhost:9200", noida_url)
            return joined.replace("--es-index products", f"--es-index {noida_index}").split()

        for args in commands[1:]:  # migrate, then embed (nothing left to do)
            proc = await asyncio.to_thread(_cli, *as_written(args), **_model(default_model_dir))
            assert proc.returncode == 0, (args, proc.stderr)
        assert "embedded 0, skipped 7" in proc.stdout

        serve = Config()
        flags = as_written(commands[0])[1:]
        for flag, value in zip(flags[::2], flags[1::2], strict=True):
            serve = serve.override(**{flag.removeprefix("--").replace("-", "_"): value})
        # The body exactly as the README sends it (no budget_ms in it), served with the
        # default budget: it bounds ranking only, however long the cluster takes (issue 22).
        (body,) = re.findall(r"curl -s localhost:8080/v1/search --json '(.*?)'", SECTION, re.S)
        backend = open_backend(serve.retrieval_config())
        client = await make_app(backend=backend, config=serve)
        resp = await client.post("/v1/search", data=body.encode())
        got = await resp.json()
        assert resp.status == 200, got
        # price <= 150 keeps the first three; sku-123 comes by id.
        assert {h["id"] for h in got["hits"]} >= {"sku-123"} and got["hits"]
        await backend.close()
    finally:
        await es.close()
