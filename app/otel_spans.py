"""One request's spans: the server span, its retrieval chunks and its model calls.

``app/tracing.py`` opens a :class:`RequestTrace` per request when tracing is on
(``app/otel.py``) and sets it as ``app.otel.CURRENT``; ``app/search.py`` hands it to retrieval
(``retrieval.trace.ChunkTrace``) and to the scorer (``rerank.observe.CallTrace``), so
neither package knows OpenTelemetry. Off, ``CURRENT`` stays None and nothing here runs.

The tree: ``POST /v1/search`` (server; continues the caller's ``traceparent``) ->
``retrieval.chunk`` per chunk (its context goes to Elasticsearch as ``traceparent``) ->
the client's own ``msearch``; and ``rerank.model_call`` -> ``tokenize``, ``infer``. A model
call is shared by the requests whose items it ran: it is one span, under the request that
led it (the earliest deadline), linked to each other request's server span.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from retrieval.trace import OUTGOING

if TYPE_CHECKING:
    from app.meta import RequestMeta
    from rerank.observe import CallTrace
    from rerank.types import CallResult


class _Chunk:
    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def done(self, result: object) -> None:
        if isinstance(result, BaseException):
            _fail(self.span, result)
        elif isinstance(result, list):
            lost = [r for r in result if isinstance(r, BaseException)]
            hits = sum(len(r) for r in result if isinstance(r, list))
            self.span.set_attribute("rerank.hits", hits)
            if lost:
                self.span.set_attribute("rerank.queries_lost", len(lost))


class Telemetry(Protocol):
    """What a request's spans need of ``app.otel.Telemetry``: its tracer (a protocol, so
    this module does not import the one that imports it)."""

    @property
    def tracer(self) -> trace.Tracer: ...


class RequestTrace:
    """The server span of one request, and the parent of everything it does."""

    __slots__ = ("_headers", "_tel", "ctx", "recording", "span")

    def __init__(
        self,
        tel: Telemetry,
        name: str,
        carrier: Mapping[str, str],
        attributes: Mapping[str, str | int],
    ) -> None:
        self._tel = tel
        parent = propagate.extract(carrier)  # traceparent/tracestate; absent: a new trace
        self.span = tel.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self.ctx = trace.set_span_in_context(self.span, parent)
        # Not sampled (OTEL_TRACES_SAMPLER): no child spans are built, the context still
        # travels to Elasticsearch (with its sampled flag off).
        self.recording = self.span.is_recording()
        self._headers: dict[str, str] | None = None

    @property
    def ids(self) -> tuple[str, str]:
        """(trace id, span id) in hex, as logs and exemplars carry them."""
        sc = self.span.get_span_context()
        return trace.format_trace_id(sc.trace_id), trace.format_span_id(sc.span_id)

    def error(self, exc: BaseException) -> None:
        _fail(self.span, exc)

    def finish(self, status: int, meta: RequestMeta | None, cancelled: bool = False) -> None:
        span = self.span
        if not self.recording:
            span.end()
            return
        span.set_attribute("http.response.status_code", status)
        if meta is not None:
            span.set_attributes(_meta_attributes(meta))
        if cancelled:
            span.set_attribute("rerank.client_gone", True)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end()

    # --- retrieval.trace.ChunkTrace ----------------------------------------------------
    @contextmanager
    def chunk(self, index: int, queries: int) -> Iterator[_Chunk | None]:
        if not self.recording:
            if self._headers is None:
                self._headers = {}
                propagate.inject(self._headers, self.ctx)
            token, out = context.attach(self.ctx), OUTGOING.set(self._headers)
            try:
                yield None
            finally:
                OUTGOING.reset(out)
                context.detach(token)
            return
        attrs = {"rerank.chunk": index, "rerank.queries": queries}
        span = self._tel.tracer.start_span("retrieval.chunk", self.ctx, attributes=attrs)
        ctx = trace.set_span_in_context(span, self.ctx)
        headers: dict[str, str] = {}
        propagate.inject(headers, ctx)
        # Current in this chunk's task only: the client's own span nests under it.
        token, out = context.attach(ctx), OUTGOING.set(headers)
        try:
            yield _Chunk(span)
        except asyncio.CancelledError:  # the request stopped waiting for it (its deadline)
            span.set_status(Status(StatusCode.ERROR, "no answer before the deadline"))
            raise
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            OUTGOING.reset(out)
            context.detach(token)
            span.end()

    # --- rerank.observe.CallTrace ------------------------------------------------------
    def model_call(
        self,
        traces: Sequence[CallTrace],
        started_ns: int,
        size: int,
        result: CallResult | None,
        error: BaseException | None = None,
    ) -> None:
        if not self.recording:  # led by the first request that is sampled, if any
            rts = (t for t in traces if isinstance(t, RequestTrace) and t.recording)
            if (lead := next(rts, None)) is not None:
                lead.model_call(traces, started_ns, size, result, error)
            return
        end_ns = time.time_ns()
        others = {id(t): t for t in traces if t is not self and isinstance(t, RequestTrace)}
        links = [Link(t.span.get_span_context()) for t in others.values()]
        attrs = {"rerank.batch.texts": size, "rerank.batch.requests": 1 + len(links)}
        tracer = self._tel.tracer
        span = tracer.start_span(
            "rerank.model_call", self.ctx, links=links, attributes=attrs, start_time=started_ns
        )
        if result is not None:
            span.set_attribute("rerank.batch.tokens", int(result.real_tokens.sum()))
            span.set_attribute("rerank.batch.padded_tokens", int(result.padded_tokens.sum()))
            # The worker's summed stage times, laid end to end before the call returned
            # (tokenising and padding interleave with inference per length group).
            infer_ns, tok_ns = int(result.infer_s * 1e9), int(result.tokenize_s * 1e9)
            ctx = trace.set_span_in_context(span, self.ctx)
            infer_start = max(started_ns, end_ns - infer_ns)
            tok_start = max(started_ns, infer_start - tok_ns)
            tracer.start_span("tokenize", ctx, start_time=tok_start).end(infer_start)
            tracer.start_span("infer", ctx, start_time=infer_start).end(end_ns)
        if error is not None:
            _fail(span, error)
        span.end(end_ns)


def _meta_attributes(meta: RequestMeta) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rerank.candidates": meta.candidates,
        "rerank.scored": meta.scored,
        "rerank.partial": meta.partial,
        "rerank.budget_exhausted": meta.budget_exhausted,
    }
    if meta.budget_ms is not None:
        out["rerank.budget_ms"] = meta.budget_ms
    if meta.backend is not None:
        out |= {"rerank.backend": meta.backend, "rerank.chunks": meta.chunks}
        out["rerank.chunks_lost"] = meta.lost
    return out


def _fail(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


__all__ = ["RequestTrace"]
