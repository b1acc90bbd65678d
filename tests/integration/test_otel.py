"""OpenTelemetry traces, against a real OTLP/HTTP receiver on loopback (tests/otlp_receiver.py,
decoding the official protobuf messages), the Elasticsearch stand-in and a real engine.

One request from a caller with a ``traceparent`` gives one trace: the server span, a span
per retrieval chunk (whose context reaches the cluster as ``traceparent`` on each
``_msearch``), the client's own ``msearch`` spans, and the model calls with their
tokenize/infer spans. A model call shared by two requests is one span, linked to the other.
A collector that hangs or refuses changes no answer and holds none up; what it loses is
counted on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from app import logs
from app.config import Config, from_sources
from app.otel import Telemetry, TracingConfig, endpoint_from_env
from app.server import create_app
from app.services import Services
from rerank.engine import ScoringEngine
from rerank.scorer import QueryScorer
from rerank.types import Doc
from retrieval.elastic.index import index_documents
from retrieval.elastic.search import ElasticBackend, make_client
from retrieval.embedded.search import EmbeddedBackend
from tests.es_standin import StandIn
from tests.otlp_receiver import Receiver, attrs, receiver
from tests.support import SMALL_CORPUS

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVER = 2  # Span.SPAN_KIND_SERVER
INDEX = "docs"
MakeClient = Callable[..., Any]


@pytest.fixture
async def collector() -> AsyncIterator[Receiver]:
    async with receiver() as rec:
        yield rec


@pytest.fixture
async def es(es_standin: tuple[StandIn, str]) -> AsyncIterator[tuple[StandIn, Any]]:
    standin, url = es_standin
    client = make_client(url, timeout_s=10)
    async for _ in index_documents(client, INDEX, SMALL_CORPUS):
        pass
    yield standin, client
    await client.close()


async def _serve(
    aiohttp_client: MakeClient,
    engine: ScoringEngine,
    backend: Any,
    endpoint: str | None,
    **overrides: object,
) -> tuple[TestClient, Telemetry | None]:
    cfg = Config().override(budget_ms=60_000, otlp_endpoint=endpoint, **overrides)
    tel = Telemetry(cfg.tracing) if endpoint else None
    app = create_app(cfg, Services(cfg, engine, backend), telemetry=tel)
    return await aiohttp_client(app), tel


async def _serve_traced_es(
    aiohttp_client: MakeClient, engine: ScoringEngine, es_client: Any, endpoint: str
) -> tuple[TestClient, Telemetry]:
    """Traced, on the stand-in in two chunks: the client's own spans go to the tracer."""
    cfg = Config().override(budget_ms=60_000, chunks=2, otlp_endpoint=endpoint)
    tel = Telemetry(cfg.tracing)
    backend = ElasticBackend(es_client, INDEX, tracer=tel.es_tracer)
    app = create_app(cfg, Services(cfg, engine, backend), telemetry=tel)
    return await aiohttp_client(app), tel


async def _flush(tel: Telemetry) -> None:
    await asyncio.to_thread(tel.provider.force_flush)


async def _metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await client.get("/metrics")).text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_families(text)
        for s in fam.samples
    }


async def test_one_trace_from_the_caller_through_retrieval_to_the_model(
    es: tuple[StandIn, Any],
    tiny_engine: ScoringEngine,
    collector: Receiver,
    aiohttp_client: MakeClient,
) -> None:
    standin, es_client = es
    client, tel = await _serve_traced_es(aiohttp_client, tiny_engine, es_client, collector.url)
    buf = io.StringIO()
    handler = logs.make_handler("json", buf)
    access = logging.getLogger("app.access")
    access.addHandler(handler)
    old = access.level
    access.setLevel(logging.INFO)
    try:
        resp = await client.post(
            "/v1/search",
            data=orjson.dumps({"query": "wing lift", "subqueries": ["heat transfer"]}),
            headers={
                "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01",
                "tracestate": "team=search",
                "X-Request-ID": "req-otel-1",
            },
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(old)
    body = await resp.json()
    assert resp.status == 200 and body["scored"] > 0
    await _flush(tel)

    # One trace: everything the service sent carries the caller's trace id.
    assert collector.spans and collector.of_trace(TRACE_ID) == collector.spans
    assert collector.services == {"rerank-service"}
    by_name: dict[str, list[Any]] = {}
    for s in collector.spans:
        by_name.setdefault(s.name, []).append(s)
    (server,) = by_name["POST /v1/search"]
    assert server.kind == SERVER and server.parent_span_id.hex() == CALLER_SPAN
    a = attrs(server)
    assert a["http.route"] == "/v1/search" and a["http.response.status_code"] == 200
    assert a["rerank.request_id"] == "req-otel-1"
    assert a["rerank.candidates"] == body["candidates"] and a["rerank.scored"] == body["scored"]
    assert a["rerank.partial"] is False and a["rerank.budget_ms"] == 60_000
    assert a["rerank.chunks"] == 2 and a["rerank.backend"] == "elasticsearch"

    chunks = by_name["retrieval.chunk"]
    assert len(chunks) == 2 and {c.parent_span_id for c in chunks} == {server.span_id}
    chunk_ids = {c.span_id.hex() for c in chunks}
    # The client's own spans nest under the chunk that sent them...
    client_spans = by_name["msearch"]
    assert {s.parent_span_id.hex() for s in client_spans} == chunk_ids
    assert all(attrs(s)["db.system.name"] == "elasticsearch" for s in client_spans)
    # ...and each _msearch carried the chunk's context to the cluster.
    sent = [h.get("traceparent", "") for h in standin.msearch_headers]
    assert len(sent) == 2 and all(t.startswith(f"00-{TRACE_ID}-") for t in sent)
    assert {t.split("-")[2] for t in sent} == chunk_ids
    assert all(h.get("tracestate") == "team=search" for h in standin.msearch_headers)

    calls = by_name["rerank.model_call"]
    assert calls and {c.parent_span_id for c in calls} == {server.span_id}
    call_ids = {c.span_id for c in calls}
    for stage in ("tokenize", "infer"):
        assert {s.parent_span_id for s in by_name[stage]} == call_ids
    assert sum(attrs(c)["rerank.batch.texts"] for c in calls) >= body["scored"]

    # Logs join traces: the access line carries the server span's ids.
    (line,) = [orjson.loads(x) for x in buf.getvalue().splitlines()]
    assert line["trace_id"] == TRACE_ID and line["span_id"] == server.span_id.hex()
    assert line["request_id"] == "req-otel-1"

    # The latency histogram's exemplar names the trace (OpenMetrics, when asked for).
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    exemplars = [
        s.exemplar.labels["trace_id"]
        for fam in text_string_to_metric_families(await om.text())
        if fam.name == "rerank_http_request_duration_seconds"
        for s in fam.samples
        if s.exemplar is not None
    ]
    assert exemplars == [TRACE_ID]
    m = await _metrics(client)
    assert m[("rerank_trace_spans_dropped_total", (("reason", "queue_full"),))] == 0
    assert m[("rerank_trace_spans_exported_total", ())] == len(collector.spans)
    await _flush(tel)
    assert not [s for s in collector.spans if s.name.startswith("GET")], "scrapes: untraced"


async def test_without_a_traceparent_a_new_trace_starts(
    tiny_engine: ScoringEngine,
    small_backend: EmbeddedBackend,
    collector: Receiver,
    aiohttp_client: MakeClient,
) -> None:
    client, tel = await _serve(aiohttp_client, tiny_engine, small_backend, collector.url)
    assert tel is not None
    resp = await client.post("/v1/rerank", data=orjson.dumps({"query": "q", "documents": ["a"]}))
    assert resp.status == 200
    await _flush(tel)
    (server,) = [s for s in collector.spans if s.kind == SERVER]
    assert server.parent_span_id == b"" and server.trace_id.hex() != TRACE_ID
    assert attrs(server)["http.route"] == "/v1/rerank"
    assert {s.trace_id for s in collector.spans} == {server.trace_id}


async def test_an_error_is_recorded_on_the_server_span(
    tiny_engine: ScoringEngine,
    collector: Receiver,
    aiohttp_client: MakeClient,
) -> None:
    from retrieval.elastic.search import ElasticBackend as EB

    # Nothing listens there: every chunk fails, the request is a 503.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    es_client = make_client(f"http://127.0.0.1:{port}", timeout_s=2)
    client, tel = await _serve(aiohttp_client, tiny_engine, EB(es_client, INDEX), collector.url)
    assert tel is not None
    resp = await client.post("/v1/search", data=orjson.dumps({"query": "wing lift"}))
    assert resp.status == 503
    await _flush(tel)
    await es_client.close()
    (server,) = [s for s in collector.spans if s.kind == SERVER]
    assert server.status.code == 2  # STATUS_CODE_ERROR
    assert attrs(server)["http.response.status_code"] == 503
    assert any(e.name == "exception" for e in server.events)
    (chunk,) = [s for s in collector.spans if s.name == "retrieval.chunk"]
    assert chunk.status.code == 2 and "BackendUnavailable" in chunk.status.message


async def test_a_model_call_shared_by_two_requests_is_one_span_linked_to_both(
    tiny_engine: ScoringEngine, collector: Receiver
) -> None:
    tel = Telemetry(TracingConfig(otlp_endpoint=collector.url + "/v1/traces"))
    first = tel.request("first", {}, {})
    second = tel.request("second", {}, {})
    a = QueryScorer(tiny_engine, "wing lift", None, trace=first)
    b = QueryScorer(tiny_engine, "heat transfer", None, trace=second)
    # Both queued before the batcher runs (it needs the loop): one call takes them all.
    await a.submit([Doc("1", "lift of a wing")])
    await b.submit([Doc("2", "heat transfer in a plate")])
    await a.wait()
    await b.wait()
    for rt in (first, second):
        rt.finish(200, None)
    await _flush(tel)
    await tel.aclose()
    (call,) = [s for s in collector.spans if s.name == "rerank.model_call"]
    assert call.parent_span_id == first.span.get_span_context().span_id.to_bytes(8, "big")
    assert [link.span_id for link in call.links] == [
        second.span.get_span_context().span_id.to_bytes(8, "big")
    ]
    assert attrs(call)["rerank.batch.requests"] == 2 and attrs(call)["rerank.batch.texts"] == 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_hung_collector_holds_up_no_answer_and_drops_are_counted(
    tiny_engine: ScoringEngine, small_backend: EmbeddedBackend, aiohttp_client: MakeClient
) -> None:
    async with receiver("hang") as rec:
        # A queue of 4 spans: the first request fills it and wakes the exporter, which
        # then waits on the collector for up to 30 s.
        client, tel = await _serve(
            aiohttp_client,
            tiny_engine,
            small_backend,
            rec.url,
            otlp_queue_spans=4,
            otlp_timeout_s=30.0,
        )
        assert tel is not None

        async def search() -> float:
            t0 = time.perf_counter()
            resp = await client.post("/v1/search", data=orjson.dumps({"query": "wing lift"}))
            assert resp.status == 200
            return time.perf_counter() - t0

        await search()
        await asyncio.wait_for(rec.hung.wait(), 10)  # the exporter is stuck on the collector
        took = [await search() for _ in range(5)]
        # Had an answer waited on the export, it would have taken the 30 s export limit.
        assert max(took) < 10.0, took
        m = await _metrics(client)
        assert m[("rerank_trace_spans_dropped_total", (("reason", "queue_full"),))] > 0
        rec.mode = "ok"
        rec.release.set()
        await tel.aclose()  # while the collector still answers: flushed at once


@pytest.mark.parametrize("how", ["closed port", "HTTP 503"])
async def test_a_refusing_collector_changes_no_status_and_failures_are_counted(
    how: str,
    tiny_engine: ScoringEngine,
    small_backend: EmbeddedBackend,
    aiohttp_client: MakeClient,
) -> None:
    async with receiver("refuse") as rec:
        url = rec.url if how == "HTTP 503" else f"http://127.0.0.1:{_free_port()}"
        client, tel = await _serve(
            aiohttp_client, tiny_engine, small_backend, url, otlp_timeout_s=1.0
        )
        assert tel is not None
        for _ in range(3):
            resp = await client.post("/v1/search", data=orjson.dumps({"query": "wing lift"}))
            assert resp.status == 200
        await _flush(tel)  # the exporter gives up after its 1 s limit
        m = await _metrics(client)
        assert m[("rerank_trace_spans_dropped_total", (("reason", "export_failed"),))] > 0
        assert m[("rerank_trace_spans_exported_total", ())] == 0
        assert (rec.exports > 0) == (how == "HTTP 503")


async def test_tracing_off_sends_no_traceparent_and_exports_nothing(
    es: tuple[StandIn, Any], tiny_engine: ScoringEngine, aiohttp_client: MakeClient
) -> None:
    standin, es_client = es
    client, tel = await _serve(aiohttp_client, tiny_engine, ElasticBackend(es_client, INDEX), None)
    assert tel is None
    resp = await client.post(
        "/v1/search",
        data=orjson.dumps({"query": "wing lift"}),
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )
    assert resp.status == 200 and standin.msearch_headers
    assert all("traceparent" not in h for h in standin.msearch_headers)
    m = await _metrics(client)
    assert not any(name.startswith("rerank_trace_") for name, _ in m)


def test_the_endpoint_comes_from_the_flag_or_the_standard_variables() -> None:
    assert endpoint_from_env(None, {}) is None
    assert endpoint_from_env("http://c:4318", {}) == "http://c:4318/v1/traces"
    assert endpoint_from_env("http://c:4318/custom", {}) == "http://c:4318/custom"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}
    assert endpoint_from_env(None, env) == "http://c:4318/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:4318/v1/traces"
    assert endpoint_from_env(None, env) == "http://t:4318/v1/traces"
    assert endpoint_from_env("http://c:4318", {"OTEL_SDK_DISABLED": "true"}) is None
    assert endpoint_from_env("http://c:4318", {"OTEL_TRACES_EXPORTER": "none"}) is None
    cfg = from_sources(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert cfg.tracing.otlp_endpoint == "http://c:4318/v1/traces"
    assert from_sources(None, {}).tracing.otlp_endpoint is None


async def test_an_unsampled_caller_gets_no_spans_but_its_context_still_reaches_the_cluster(
    es: tuple[StandIn, Any],
    tiny_engine: ScoringEngine,
    collector: Receiver,
    aiohttp_client: MakeClient,
) -> None:
    standin, es_client = es
    client, tel = await _serve_traced_es(aiohttp_client, tiny_engine, es_client, collector.url)
    resp = await client.post(
        "/v1/search",
        data=orjson.dumps({"query": "wing lift", "subqueries": ["heat transfer"]}),
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-00"},  # flags 00: not sampled
    )
    assert resp.status == 200
    await _flush(tel)
    assert collector.spans == []  # nothing built, nothing sent (the client's spans neither)
    sent = [h["traceparent"] for h in standin.msearch_headers]
    assert len(sent) == 2 and all(t.startswith(f"00-{TRACE_ID}-") for t in sent)
    assert all(t.endswith("-00") for t in sent)
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert "trace_id" not in await om.text()


async def test_a_shared_call_led_by_an_unsampled_request_is_traced_under_a_sampled_one(
    tiny_engine: ScoringEngine, collector: Receiver
) -> None:
    tel = Telemetry(TracingConfig(otlp_endpoint=collector.url))
    unsampled = tel.request("first", {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-00"}, {})
    sampled = tel.request("second", {}, {})
    assert not unsampled.recording and sampled.recording
    a = QueryScorer(tiny_engine, "wing lift", None, trace=unsampled)
    b = QueryScorer(tiny_engine, "heat transfer", None, trace=sampled)
    await a.submit([Doc("1", "lift of a wing")])  # queued first: it leads the call
    await b.submit([Doc("2", "heat transfer in a plate")])
    await a.wait()
    await b.wait()
    for rt in (unsampled, sampled):
        rt.finish(200, None)
    await _flush(tel)
    await tel.aclose()
    (call,) = [s for s in collector.spans if s.name == "rerank.model_call"]
    assert call.parent_span_id == sampled.span.get_span_context().span_id.to_bytes(8, "big")
    assert {s.trace_id.hex() for s in collector.spans} == {sampled.ids[0]}
