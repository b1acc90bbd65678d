"""Request tracing: an id per request, one structured log line per request, and the
request-level metrics.

The id comes from ``X-Request-ID`` when the caller (a gateway, a client retrying) sends a
safe one, so one id follows a request across services; otherwise it is generated. It is
echoed in the response, set as the logging context for everything logged meanwhile
(``app/logs.py``), and written in the access line with the stage timings.

The middleware is the outermost one: it sees the status after ``errors_and_timing`` mapped
an exception, and stamps the id on error responses too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from app import metrics as metrics_mod
from app.logs import REQUEST_ID
from app.metrics import METRICS, Metrics
from rerank.pipeline import ScoreOutcome
from retrieval.types import RetrievalReport

HEADER = "X-Request-ID"
MAX_ID_LENGTH = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
# Probes and scrapes come every few seconds: their successes log at DEBUG, not INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_GONE = 499  # nginx's code for "client closed the request"

access_log = logging.getLogger("app.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def accept_id(raw: str | None) -> str:
    """The caller's id when it is short and plain (it ends up in logs and headers: no
    spaces, quotes or control characters); a fresh uuid4 hex otherwise."""
    if raw and len(raw) <= MAX_ID_LENGTH and _SAFE_ID.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


@dataclass
class RequestTrace:
    """What a handler learned about its request, for the access line and the metrics."""

    id: str
    stages: dict[str, float] = field(default_factory=dict)  # seconds
    candidates: int | None = None
    scored: int | None = None
    budget_exhausted: bool | None = None
    backend: str | None = None
    chunks: int = 0
    lost: int = 0
    scored_at: float | None = None  # perf_counter() when the handler had its scores

    @property
    def partial(self) -> bool | None:
        if self.budget_exhausted is None:
            return None
        return self.budget_exhausted or self.lost > 0


TRACE = web.RequestKey("trace", RequestTrace)


def record(
    request: web.Request,
    scoring: ScoreOutcome,
    report: RetrievalReport | None = None,
    backend: str | None = None,
) -> None:
    """Called by the handlers once scoring is done (no-op without the middleware)."""
    trace = request.get(TRACE)
    if trace is None:
        return
    if report is not None:
        trace.stages["retrieve"] = report.seconds
        trace.chunks, trace.lost, trace.backend = report.chunks, len(report.lost), backend
    trace.stages["tokenize"] = scoring.times.tokenize
    trace.stages["infer"] = scoring.times.infer
    trace.candidates = len(scoring.considered)
    trace.scored = len(scoring.model_scores)
    trace.budget_exhausted = scoring.budget_exhausted
    trace.scored_at = time.perf_counter()


def _endpoint(request: web.Request) -> str:
    """The route template, never the raw path: unknown paths must not grow label sets."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _observe(
    m: Metrics, endpoint: str, method: str, status: int, secs: float, t: RequestTrace
) -> None:
    labels = (endpoint, method, str(status))
    m.requests.labels(*labels).inc()
    m.latency.labels(*labels).observe(secs)
    for stage, s in t.stages.items():
        m.stage.labels(stage).observe(s)
    if t.budget_exhausted:
        m.partial.labels(endpoint).inc()
    if t.backend is not None:
        m.chunks.labels(t.backend).inc(t.chunks)
        m.lost.labels(t.backend).inc(t.lost)


def _log(request: web.Request, endpoint: str, status: int, secs: float, t: RequestTrace) -> None:
    quiet = request.path in QUIET_PATHS and status < 400
    level = logging.DEBUG if quiet else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    fields: dict[str, object] = {
        "endpoint": endpoint,
        "method": request.method,
        "status": status,
        "duration_ms": round(secs * 1000.0, 3),
    }
    if t.stages:
        fields["stages_ms"] = {k: round(v * 1000.0, 3) for k, v in t.stages.items()}
    if t.candidates is not None:
        fields |= {"candidates": t.candidates, "scored": t.scored, "partial": t.partial}
        fields["budget_exhausted"] = t.budget_exhausted
    if t.backend is not None:
        fields |= {"chunks": t.chunks, "lost": t.lost}
    access_log.log(
        level,
        "%s %s %d",
        request.method,
        request.path,
        status,
        extra={"request_id": t.id, "fields": fields},
    )


def middleware(m: Metrics) -> Middleware:
    @web.middleware
    async def trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        trace = RequestTrace(accept_id(request.headers.get(HEADER)))
        request[TRACE] = trace
        token = REQUEST_ID.set(trace.id)
        m.in_flight.inc()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            if not resp.prepared:
                resp.headers[HEADER] = trace.id
            return resp
        except web.HTTPException as exc:  # only when no inner middleware mapped it
            status = exc.status
            exc.headers[HEADER] = trace.id
            raise
        except asyncio.CancelledError:
            status = CLIENT_GONE
            raise
        finally:
            m.in_flight.dec()
            end = time.perf_counter()
            secs = end - t0
            if trace.scored_at is not None:
                trace.stages["respond"] = end - trace.scored_at
            endpoint = _endpoint(request)
            _observe(m, endpoint, request.method, status, secs, trace)
            _log(request, endpoint, status, secs, trace)
            REQUEST_ID.reset(token)

    return trace_requests


def install(app: web.Application, metrics: Metrics | None = None) -> Metrics:
    """Tracing as the outermost middleware, and ``GET /metrics``; before the app starts."""
    m = metrics or Metrics()
    app[METRICS] = m
    app.middlewares.insert(0, middleware(m))
    app.router.add_get("/metrics", metrics_mod.handle)
    return m
