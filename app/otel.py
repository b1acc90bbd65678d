"""OpenTelemetry traces, exported over OTLP/HTTP: set-up, export and its losses.

Off unless an endpoint is configured (``--otlp-endpoint``, or the standard
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turn it off). Off, the SDK is not even imported and the
request path makes no span object: every hook is a ``None`` checked once.

On, spans go to a ``BatchSpanProcessor`` with a bounded queue; its worker thread exports
them. A slow or absent collector costs that thread only: a full queue drops the new span
instead of waiting, and both kinds of loss (queue full, export failed) are counted
on ``/metrics`` (``rerank_trace_spans_dropped_total``). The per-request spans are in
``app/otel_spans.py``.

The SDK still reads its other standard variables itself: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_PROPAGATORS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from app import __version__
from rerank.config import opt

if TYPE_CHECKING:
    from app.otel_spans import RequestTrace

# The request's trace while it is handled (set by app/tracing.py); None when tracing is off.
CURRENT: ContextVar[RequestTrace | None] = ContextVar("request_trace", default=None)


@dataclass(frozen=True)
class TracingConfig:
    """Where spans go, and how much may wait for the collector."""

    otlp_endpoint: str | None = opt(
        None,
        "OTLP/HTTP collector for traces (http://collector:4318; /v1/traces is added when the "
        "URL has no path); unset, and no OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT: no tracing",
    )
    otlp_service_name: str = opt("rerank-service", "service.name (OTEL_SERVICE_NAME wins)")
    otlp_queue_spans: int = opt(
        2048, "spans waiting for export at most; past it spans are dropped (counted)"
    )
    otlp_timeout_s: float = opt(
        5.0, "one export's time limit (retries included); also bounds the flush at shutdown"
    )

    def __post_init__(self) -> None:
        if self.otlp_queue_spans < 1 or self.otlp_timeout_s <= 0:
            raise ValueError("otlp_queue_spans must be >= 1 and otlp_timeout_s > 0")


def endpoint_from_env(configured: str | None, env: Mapping[str, str]) -> str | None:
    """The traces endpoint the settings and the standard variables name, or None (off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    url = (
        configured
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    return traces_url(url) if url else None


def traces_url(url: str) -> str:
    """A collector's base URL gets the OTLP/HTTP traces path; a URL with a path is kept."""
    return url.rstrip("/") + "/v1/traces" if urlsplit(url).path in ("", "/") else url


class Telemetry:
    """The service's tracer provider (its own, not the process-wide one: two apps in one
    process each export to their own collector), its bounded export, and the counts."""

    def __init__(self, cfg: TracingConfig) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        assert cfg.otlp_endpoint, "Telemetry needs an endpoint (None: off)"
        self.timeout_s = cfg.otlp_timeout_s
        self.exported = 0
        self.dropped = {"queue_full": 0, "export_failed": 0}
        resource = Resource.create({})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: cfg.otlp_service_name}))
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(_processor(self, cfg))
        self.tracer = self.provider.get_tracer("rerank-service", __version__)
        # elasticsearch-py's own spans (retrieval/trace.py client_spans), under its name.
        self.es_tracer = self.provider.get_tracer("elasticsearch-api")

    def request(
        self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, str | int]
    ) -> RequestTrace:
        """A request's server span, continuing the trace ``carrier``'s headers name."""
        from app.otel_spans import RequestTrace

        return RequestTrace(self, name, carrier, attributes)

    def collector(self) -> Collector:
        return _DropCollector(self)

    async def aclose(self) -> None:
        """Flush what is queued and stop, waiting ``otlp_timeout_s`` at most: a hung
        collector must not hold up the shutdown (the export thread is a daemon)."""
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def shutdown() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop gave up and is gone
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shutdown, name="otel-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), self.timeout_s + 1.0)


def _processor(tel: Telemetry, cfg: TracingConfig) -> Any:
    """A ``BatchSpanProcessor`` that counts what it drops, exporting through a counting
    wrapper of the OTLP/HTTP exporter."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class CountingExporter(SpanExporter):
        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result = self.inner.export(spans)
            except Exception:
                result = SpanExportResult.FAILURE
            if result is SpanExportResult.SUCCESS:
                tel.exported += len(spans)
            else:
                tel.dropped["export_failed"] += len(spans)
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    class CountingProcessor(BatchSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            # A full queue drops this span here, counted, instead of the SDK's own drop
            # (of the oldest), which also builds a warning log record per span. The queue
            # is not public: this reads it where the SDK (1.3x-1.4x) keeps it.
            inner = getattr(self, "_batch_processor", None)
            queue = getattr(inner, "_queue", None)
            if queue is not None and len(queue) >= cfg.otlp_queue_spans:
                tel.dropped["queue_full"] += 1
                return
            super().on_end(span)

    assert cfg.otlp_endpoint
    exporter = OTLPSpanExporter(endpoint=traces_url(cfg.otlp_endpoint), timeout=cfg.otlp_timeout_s)
    return CountingProcessor(
        CountingExporter(exporter),
        max_queue_size=cfg.otlp_queue_spans,
        max_export_batch_size=min(512, cfg.otlp_queue_spans),
    )


class _DropCollector(Collector):
    def __init__(self, tel: Telemetry) -> None:
        self._tel = tel

    def collect(self) -> Iterator[CounterMetricFamily]:
        dropped = CounterMetricFamily(
            "rerank_trace_spans_dropped",
            "Spans never delivered to the collector: queue_full (the export queue was full, "
            "a slow or absent collector), export_failed (the collector refused or timed out)",
            labels=["reason"],
        )
        for reason, n in self._tel.dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily(
            "rerank_trace_spans_exported", "Spans the collector accepted", value=self._tel.exported
        )


__all__ = ["CURRENT", "Telemetry", "TracingConfig", "endpoint_from_env"]
