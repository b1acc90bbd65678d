"""Request ids and the per-request log line, over a real loopback server."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app import logs
from app.config import Config, from_sources
from app.meta import RequestMeta
from app.tracing import accept_id
from rerank.engine import ScoringEngine
from retrieval.errors import RetrievalError
from retrieval.types import Hit, SubQuery
from tests.support import MakeApp

HEX32 = r"[0-9a-f]{32}"


@pytest.fixture
async def client(make_app: MakeApp, tiny_engine: ScoringEngine) -> TestClient:
    return await make_app(engine_=tiny_engine, budget_ms=60_000)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The service's own JSON handler (formatter + request-id filter) on the ``app`` loggers."""
    buf = io.StringIO()
    handler = logs.make_handler("json", buf)
    app_log = logging.getLogger("app")
    app_log.addHandler(handler)
    old = app_log.level
    app_log.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        app_log.removeHandler(handler)
        app_log.setLevel(old)


def parsed(buf: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in buf.getvalue().splitlines()]


def access(buf: io.StringIO) -> list[dict[str, Any]]:
    return [r for r in parsed(buf) if r["logger"] == "app.access"]


async def test_the_callers_id_is_echoed_and_logged_with_the_stage_timings(
    client: TestClient, json_lines: io.StringIO
) -> None:
    resp = await client.post(
        "/v1/search",
        data=orjson.dumps({"query": "wing lift", "candidates": 4}),
        headers={"X-Request-ID": "gw-7f3a.01:retry-2"},
    )
    assert resp.status == 200
    assert resp.headers["X-Request-ID"] == "gw-7f3a.01:retry-2"
    body = await resp.json()
    [line] = access(json_lines)
    assert line["request_id"] == "gw-7f3a.01:retry-2"
    assert line["level"] == "INFO" and line["msg"] == "POST /v1/search 200"
    assert line["endpoint"] == "/v1/search" and line["method"] == "POST"
    assert line["status"] == 200 and line["duration_ms"] >= body["timings"]["total"]
    stages = line["stages_ms"]
    assert stages.keys() == {"retrieve", "tokenize", "infer", "respond", "ranking"}
    assert all(stages[k] == body["timings"][k] for k in ("retrieve", "tokenize", "infer"))
    assert 0 < stages["respond"] < line["duration_ms"]
    # The log's ranking ends when the response was written, the body's when it was built.
    assert body["timings"]["ranking"] <= stages["ranking"] < line["duration_ms"]
    assert line["candidates"] == body["candidates"] >= 1
    assert line["scored"] == body["scored"] and line["partial"] is body["partial"] is False
    assert line["chunks"] == 1 and line["lost"] == 0


async def test_an_id_is_generated_when_absent_or_unsafe(
    client: TestClient, json_lines: io.StringIO
) -> None:
    sent: Sequence[str | None] = [None, "", "has space", "x" * 129, 'q"uote', "-lead", "é"]
    got = []
    for rid in sent:
        headers = {} if rid is None else {"X-Request-ID": rid}
        resp = await client.get("/healthz", headers=headers)
        assert resp.status == 200
        got.append(resp.headers["X-Request-ID"])
    assert all(len(g) == 32 and int(g, 16) >= 0 for g in got), got
    assert len(set(got)) == len(got)  # fresh each time
    assert accept_id("x" * 128) == "x" * 128  # the longest accepted
    # Probes log at DEBUG: nothing at INFO for them.
    assert access(json_lines) == []


async def test_a_500_carries_the_id_in_its_header_and_its_error_log_line(
    make_app: MakeApp, tiny_engine: ScoringEngine, json_lines: io.StringIO
) -> None:
    class Broken:
        name = "broken"

        async def search_chunk(
            self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
        ) -> list[list[Hit] | RetrievalError]:
            raise RuntimeError("boom")

        async def ping(self) -> bool:
            return True

        def queue_age(self) -> float:
            return 0.0

        async def num_docs(self) -> int | None:
            return None

        async def close(self) -> None:
            pass

    client = await make_app(engine_=tiny_engine, backend=Broken())
    resp = await client.post("/v1/search", data=orjson.dumps({"query": "wing"}))
    assert resp.status == 500
    rid = resp.headers["X-Request-ID"]
    assert (await resp.json())["error"]["request_id"] == rid  # the body names it too
    lines = parsed(json_lines)
    error = next(r for r in lines if r["logger"] == "app")
    assert error["request_id"] == rid and "RuntimeError: boom" in error["exc"]
    [line] = access(json_lines)
    assert line["request_id"] == rid and line["status"] == 500 and line["level"] == "INFO"


async def test_rerank_is_logged_with_candidates_and_partial(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    resp = await client.post(
        "/v1/rerank", data=orjson.dumps({"query": "wing", "documents": ["a", "b", "c"]})
    )
    assert resp.status == 200
    [rec] = [r for r in caplog.records if r.name == "app.access"]
    assert rec.request_id == resp.headers["X-Request-ID"]  # type: ignore[attr-defined]
    fields = rec.fields  # type: ignore[attr-defined]
    assert fields["endpoint"] == "/v1/rerank" and fields["candidates"] == 3
    assert fields["partial"] is False and set(fields["stages_ms"]) == {
        "tokenize",
        "infer",
        "respond",
    }


def test_text_format_keeps_the_fields_readable() -> None:
    rec = logging.LogRecord("app.access", logging.INFO, __file__, 1, "GET /x %d", (200,), None)
    rec.request_id = "abc"
    rec.fields = {"status": 200, "stages_ms": {"infer": 1.5}}
    line = logs.TextFormatter().format(rec)
    assert line.endswith("INFO app.access GET /x 200 [abc] status=200 stages_ms=infer:1.5")


def test_log_format_and_level_come_from_the_config() -> None:
    cfg = from_sources(env={"RERANK_LOG_FORMAT": "text", "RERANK_LOG_LEVEL": "debug"})
    assert cfg.log_format == "text" and cfg.log_level == "debug"
    assert Config().log_format == "json"
    with pytest.raises(ValueError, match="log_format"):
        Config(log_format="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_level"):
        Config(log_level="chatty")


def test_request_meta_turns_a_budget_into_a_deadline_once_and_fixes_its_total() -> None:
    meta = RequestMeta.start(20.0, t0=100.0)
    assert meta.deadline == pytest.approx(100.02) and RequestMeta.start(None).deadline is None
    assert meta.partial is False
    meta.lost = 1
    assert meta.partial is True  # a lost retrieval part is partial without a budget cut
    meta = RequestMeta.start(None)
    meta.stages = {"retrieve": 0.0012, "infer": 0.002}
    first = meta.timings_ms()
    assert list(first) == ["retrieve", "infer", "total"] and first["retrieve"] == 1.2
    assert meta.timings_ms() == first  # the body and Server-Timing cannot disagree
