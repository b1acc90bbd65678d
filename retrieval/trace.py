"""Tracing hooks for retrieval, without tying retrieval to a tracing library.

The service (``app/otel_spans.py``) passes a :class:`ChunkTrace` to a ``RetrievalRun``
when tracing is on; with it off nothing here runs. Each chunk's search happens inside
``chunk()``, whose implementation sets :data:`OUTGOING`: the headers (W3C ``traceparent``,
``tracestate``) a backend that speaks HTTP forwards, so the cluster's own spans join the
caller's trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from elasticsearch._otel import OpenTelemetry

# Set only inside a traced chunk's task (each chunk runs in its own task).
OUTGOING: ContextVar[Mapping[str, str] | None] = ContextVar("retrieval_trace", default=None)


class ChunkSpan(Protocol):
    def done(self, result: object) -> None:
        """The chunk's outcome: its per-query results, or the error that lost it."""


class ChunkTrace(Protocol):
    def chunk(self, index: int, queries: int) -> AbstractContextManager[ChunkSpan | None]:
        """Around one chunk's search, in the task that runs it (None: no span for it, the
        request is not sampled; the headers still go out)."""
        ...


def client_spans(tracer: Any | None) -> OpenTelemetry:
    """What elasticsearch-py's own spans (one per request: ``msearch``, with the node,
    status and cluster) go to: ``tracer`` (an OpenTelemetry tracer), or nowhere.

    The client only builds spans, it sends no ``traceparent`` (its headers are fixed
    before its span starts): :data:`OUTGOING` does that. Its default is the process-wide
    tracer; this hands it the service's instead, and nothing at all when tracing is off.
    It is set on each ``options()`` copy, since a copy starts from the default again."""
    from elasticsearch._otel import OpenTelemetry  # only with Elasticsearch configured

    return OpenTelemetry(enabled=tracer is not None, tracer=tracer)
