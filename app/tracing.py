"""Request tracing: an id per request, one structured log line per request, the
request-level metrics, and the app's one count of requests in flight.

The id comes from ``X-Request-ID`` when the caller (a gateway, a client retrying) sends a
safe one, so one id follows a request across services; otherwise it is generated. It is
echoed in the response, set as the logging context for everything logged meanwhile
(``app/logs.py``), and written in the access line with the stage timings, which come from
the handler's ``RequestMeta`` (``app/meta.py``), as the response body's do.

The middleware is the outermost one: it sees the status after ``errors_and_timing`` mapped
an exception, and stamps the id on error responses too. With tracing on (``app/otel.py``)
it also opens the request's server span (continuing the caller's ``traceparent``), sets it
where the handler and the logs find it, and gives its trace id to the latency histogram as
an exemplar; off, none of that runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.http import META, Handler, InFlight
from app.logs import REQUEST_ID, TRACE_IDS
from app.meta import RequestMeta, ms
from app.metrics import Metrics
from app.otel import CURRENT, Telemetry
from app.paths import QUIET_PATHS

if TYPE_CHECKING:
    from app.otel_spans import RequestTrace

HEADER = "X-Request-ID"
MAX_ID_LENGTH = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
CLIENT_GONE = 499  # nginx's code for "client closed the request"
# A request the server cancelled itself at the drain timeout (SIGTERM): a server-side end,
# never counted as a client hang-up.
DRAIN_CANCELLED = 503


def _cancelled_status(request: web.Request) -> int:
    """499 for a hang-up; 503 when the server stopped the connection (``serve``'s runner
    marks its connections ``stopping`` when it shuts them down)."""
    return DRAIN_CANCELLED if getattr(request.protocol, "stopping", False) else CLIENT_GONE


access_log = logging.getLogger("app.access")
log = logging.getLogger("app")


def accept_id(raw: str | None) -> str:
    """The caller's id when it is short and plain (it ends up in logs and headers: no
    spaces, quotes or control characters); a fresh uuid4 hex otherwise."""
    if raw and len(raw) <= MAX_ID_LENGTH and _SAFE_ID.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


def _stages(meta: RequestMeta, end: float) -> dict[str, float]:
    """The handler's stages, plus ``respond`` (from the scores to the response written) and,
    for a search, ``ranking`` (from retrieval's answer to the response written: what the
    ranking budget bounds)."""
    out = dict(meta.stages)
    if meta.scored_at is not None:
        out["respond"] = end - meta.scored_at
    if meta.retrieved_at is not None:
        out["ranking"] = time.monotonic() - meta.retrieved_at
    return out


def _endpoint(request: web.Request) -> str:
    """The route template, never the raw path: unknown paths must not grow label sets."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _observe(
    m: Metrics,
    endpoint: str,
    method: str,
    status: int,
    secs: float,
    meta: RequestMeta | None,
    stages: dict[str, float],
    exemplar: dict[str, str] | None = None,
) -> None:
    labels = (endpoint, method, str(status))
    m.requests.labels(*labels).inc()
    m.latency.labels(*labels).observe(secs, exemplar)
    for stage, s in stages.items():
        m.stage.labels(stage).observe(s)
    if meta is None:
        return
    if meta.budget_exhausted:
        m.partial.labels(endpoint).inc()
    if meta.backend is not None:
        m.chunks.labels(meta.backend).inc(meta.chunks)
        m.lost.labels(meta.backend).inc(meta.lost)


def _log(
    request: web.Request,
    endpoint: str,
    status: int,
    secs: float,
    meta: RequestMeta | None,
    stages: dict[str, float],
) -> None:
    # Probes and scrapes come every few seconds: their successes log at DEBUG, not INFO.
    quiet = request.path in QUIET_PATHS and status < 400
    level = logging.DEBUG if quiet else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    fields: dict[str, object] = {
        "endpoint": endpoint,
        "method": request.method,
        "status": status,
        "duration_ms": ms(secs),
    }
    if stages:
        fields["stages_ms"] = {k: ms(v) for k, v in stages.items()}
    if meta is not None:
        fields |= {"candidates": meta.candidates, "scored": meta.scored, "partial": meta.partial}
        fields["budget_exhausted"] = meta.budget_exhausted
        if meta.backend is not None:
            fields |= {"chunks": meta.chunks, "lost": meta.lost}
    extra = {"request_id": REQUEST_ID.get(), "fields": fields}
    access_log.log(level, "%s %s %d", request.method, request.path, status, extra=extra)


def _start_span(tel: Telemetry, request: web.Request, rid: str) -> RequestTrace:
    route = _endpoint(request)
    attrs = {"http.request.method": request.method, "http.route": route}
    attrs |= {"url.path": request.path, "rerank.request_id": rid}
    return tel.request(f"{request.method} {route}", request.headers, attrs)


def middleware(m: Metrics, in_flight: InFlight, telemetry: Telemetry | None = None) -> Middleware:
    """The outermost middleware: the request id, the in-flight count, the access line, the
    request metrics, and the server span when ``telemetry`` is given (tracing on)."""

    @web.middleware
    async def trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        rid = accept_id(request.headers.get(HEADER))
        token = REQUEST_ID.set(rid)
        # Probes and scrapes are not traced (noise every few seconds, like their logs).
        rt = None
        if telemetry is not None and request.path not in QUIET_PATHS:
            rt = _start_span(telemetry, request, rid)
        if rt is not None:
            ids = rt.ids
            tokens = CURRENT.set(rt), TRACE_IDS.set(ids)
        in_flight.now += 1
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            if not resp.prepared:
                resp.headers[HEADER] = rid
            return resp
        except web.HTTPException as exc:  # only when no inner middleware mapped it
            status = exc.status
            exc.headers[HEADER] = rid
            raise
        except asyncio.CancelledError:
            status = _cancelled_status(request)
            in_flight.cancelled += 1
            why = "client went away" if status == CLIENT_GONE else "cancelled at the drain timeout"
            log.info("%s on %s: handler cancelled", why, request.path)
            raise
        finally:
            in_flight.now -= 1
            end = time.perf_counter()
            secs = end - t0
            meta = request.get(META)
            stages = {} if meta is None else _stages(meta, end)
            endpoint = _endpoint(request)
            exemplar = None
            if rt is not None:
                rt.finish(status, meta, status == CLIENT_GONE)
                if rt.recording:  # an unsampled trace is nowhere to be found
                    exemplar = {"trace_id": ids[0]}
            _observe(m, endpoint, request.method, status, secs, meta, stages, exemplar)
            _log(request, endpoint, status, secs, meta, stages)
            if rt is not None:
                CURRENT.reset(tokens[0])
                TRACE_IDS.reset(tokens[1])
            REQUEST_ID.reset(token)

    return trace_requests
