"""Live metrics in the Prometheus text format, served on ``GET /metrics``.

One ``CollectorRegistry`` per application (not the process-wide default), so tests that
start several apps in one process each count their own requests; the process collector
(CPU, memory, file descriptors) is registered on it too. Per-request durations
(``rerank_http_request_duration_seconds``, ``rerank_stage_duration_seconds``) and
per-model-call ones (``rerank_model_call_duration_seconds``, ``rerank_queue_wait_seconds``)
are separate metrics, so no histogram mixes the two populations. The HTTP middleware
(``app/tracing.py``) records requests; the engine reports its model calls, queue waits and
cache lookups through ``rerank.observe.EngineObserver``, which :class:`Metrics` implements.

Latency buckets are cut for a 20 ms budget: dense from 0.1 ms to 50 ms, sparse up to 10 s.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.registry import Collector

from app.http import InFlight
from app.logs import SUPPRESSED
from app.thread_cpu import ThreadCpuCollector

# Seconds. Requests: the 20 ms budget sits between 15 and 25 ms.
REQUEST_BUCKETS = (
    0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Stages are fractions of a request: start lower.
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RATIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

STAGES = ("retrieve", "tokenize", "infer", "respond", "ranking")


class SuppressedLogCollector(Collector):
    """Log lines held back by ``app.logs.RateLimitFilter`` (process-wide), by logger and level."""

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "rerank_log_lines_suppressed",
            "Repeated warning/error log lines held back by the log rate limit",
            labels=["logger", "level"],
        )
        for (name, level), n in sorted(SUPPRESSED.items()):
            fam.add_metric([name, level], n)
        yield fam


class Metrics:
    """Every metric the service exports, on its own registry; also the engine's observer."""

    def __init__(self) -> None:
        # No `*_created` series: they double every counter and histogram for a timestamp
        # nobody graphs. The switch is process-wide in prometheus_client; every registry
        # this service builds wants it, so it is thrown where one is built.
        disable_created_metrics()
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        r.register(ThreadCpuCollector())
        r.register(SuppressedLogCollector())
        self.build = Gauge(
            "rerank_build_info",
            "Always 1: the service version and the model it serves, as labels",
            ["version", "model", "precision"],
            registry=r,
        )
        self.requests = Counter(
            "rerank_http_requests",
            "HTTP requests answered, by endpoint (route), method and status",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "rerank_http_request_duration_seconds",
            "Time from the request reaching the app to its response, by endpoint and status",
            ["endpoint", "method", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.admission_limit = Gauge(
            "rerank_admission_limit",
            "Scoring requests admitted at once now (adaptive, at most --max-in-flight)",
            registry=r,
        )
        self.local_queue_wait = Gauge(
            "rerank_local_queue_wait_seconds",
            "How long the oldest waiter of a local queue has waited now: event_loop (a timer's "
            "lateness), search_thread (the embedded index's: admission sheds searches on it)",
            ["queue"],
            registry=r,
        )
        self.shed = Counter(
            "rerank_admission_shed",
            "Scoring requests refused with 503 overloaded, by why: in_flight_limit (the "
            "adaptive bound) or standing_queue (searches, while the search thread's queue "
            "stood over --queue-target-ms)",
            ["reason"],
            registry=r,
        )
        for reason in ("in_flight_limit", "standing_queue"):  # 0 until one happens
            self.shed.labels(reason)
        self.in_flight = Gauge(
            "rerank_http_requests_in_flight", "Requests being handled right now", registry=r
        )
        self.stage = Histogram(
            "rerank_stage_duration_seconds",
            "Time per request and stage: retrieve (whole fan-out), tokenize and infer (summed "
            "over the request's model calls that answered in time), respond (from the scores "
            "to the response written), ranking (searches: from retrieval's answer to the "
            "response written, what --budget-ms bounds)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rerank_batch_size",
            "Texts per model call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_call = Histogram(
            "rerank_model_call_duration_seconds",
            "Inference time of each model call, whether or not its request still waited",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.queue_wait_s = Histogram(
            "rerank_queue_wait_seconds",
            "Time each text queued for the model waited before its model call started",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.padding = Histogram(
            "rerank_batch_padding_ratio",
            "Share of the tokens computed in a model call that were padding",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "rerank_tokens",
            "Tokens computed by the model: real (carrying text) or padding; the two kinds "
            "are disjoint, so their sum is every token computed",
            ["kind"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "rerank_cache_lookups",
            "Document-embedding cache lookups; hit rate = hit / (hit + miss)",
            ["result"],
            registry=r,
        )
        self.pair_lookups = Counter(
            "rerank_pair_cache_lookups",
            "Cross-encoder score cache lookups (query, document); hit rate = hit / (hit + miss)",
            ["result"],
            registry=r,
        )
        self.evictions = Counter(
            "rerank_cache_evictions",
            "Entries a cache dropped to stay within its size (--cache-mb)",
            ["cache"],
            registry=r,
        )
        self.partial = Counter(
            "rerank_partial_answers",
            "Requests answered before every candidate was scored (budget exhausted)",
            ["endpoint"],
            registry=r,
        )
        self.chunks = Counter(
            "rerank_retrieval_chunks",
            "Retrieval chunks sent (one _msearch or embedded search each)",
            ["backend"],
            registry=r,
        )
        self.lost = Counter(
            "rerank_retrieval_lost_parts",
            "Retrieval chunks or single queries that failed or missed the deadline",
            ["backend"],
            registry=r,
        )
        # Labels known up front show as zero before the first event, so rates are defined.
        for s in STAGES:
            self.stage.labels(s)
        for kind in ("real", "padding"):
            self.tokens.labels(kind)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result)
            self.pair_lookups.labels(result)
        for cache in ("embedding", "pair"):
            self.evictions.labels(cache)

    # --- rerank.observe.EngineObserver (called from the scoring thread) -------------------
    def batch(self, *, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_call.observe(seconds)
        self.tokens.labels("real").inc(real_tokens)
        self.tokens.labels("padding").inc(padded_tokens - real_tokens)
        if padded_tokens > 0:
            self.padding.observe(1.0 - real_tokens / padded_tokens)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_s.observe(seconds)

    def cache(self, *, hits: int, misses: int) -> None:
        self.cache_lookups.labels("hit").inc(hits)
        self.cache_lookups.labels("miss").inc(misses)

    def pair_cache(self, *, hits: int, misses: int) -> None:
        self.pair_lookups.labels("hit").inc(hits)
        self.pair_lookups.labels("miss").inc(misses)

    def cache_evicted(self, *, cache: str, count: int) -> None:
        self.evictions.labels(cache).inc(count)

    def describe(self, version: str, model: str, precision: str) -> None:
        """``rerank_build_info``: set once the model is known."""
        self.build.clear()
        self.build.labels(version, model, precision).set(1)

    def watch(self, in_flight: InFlight) -> None:
        """The in-flight gauge reads the app's one count at each scrape."""
        self.in_flight.set_function(lambda: in_flight.now)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("metrics")


OPENMETRICS = "application/openmetrics-text"


async def handle(request: web.Request) -> web.Response:
    """``GET /metrics``: no secrets in it, but operators may restrict it (auth, network).
    The Prometheus text format, or OpenMetrics when the scraper asks for it (the one that
    carries exemplars: the trace id of a request in the latency histogram's buckets)."""
    accept = request.headers.get("Accept", "")
    if OPENMETRICS in accept:
        encode, content_type = choose_encoder(accept)
        return web.Response(body=encode(request.app[METRICS].registry), content_type=None,
                            headers={"Content-Type": content_type})  # fmt: skip
    body = request.app[METRICS].render()
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp
