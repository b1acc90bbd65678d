"""The aiohttp application: middleware that maps errors and stamps ``Server-Timing``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from app import routes, tracing
from app.admission import ADMISSION, Admission, admission_middleware, retry_after_middleware
from app.auth import auth_middlewares
from app.config import Config
from app.errors import ApiError, from_domain
from app.logs import REQUEST_ID
from app.metrics import Metrics
from app.openapi import build_openapi
from app.services import Services, open_services

log = logging.getLogger("app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    # The request id (also in the X-Request-ID header) finds the request's log lines.
    err = {"code": code, "message": message, "field": field, "request_id": REQUEST_ID.get()}
    return routes.json_response({"error": err}, status=status)


@web.middleware
async def errors_and_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.monotonic()
    try:
        resp = await handler(request)
    except ApiError as e:
        resp = _error(e.status, e.code, e.message, e.field)
    except web.HTTPRequestEntityTooLarge:
        resp = _error(
            413,
            "body_too_large",
            f"body: larger than the limit of {request.app._client_max_size} bytes",
            "body",
        )
    except web.HTTPException as e:
        resp = _error(e.status, e.reason.lower().replace(" ", "_"), e.reason)
    except Exception as e:
        mapped = from_domain(e)
        if mapped is None:
            log.exception("unhandled error on %s", request.path)
            mapped = ApiError(500, "internal_error", "internal error")
        elif mapped.status >= 500:
            log.error("%s on %s: %s", mapped.code, request.path, e)
        resp = _error(mapped.status, mapped.code, mapped.message)
    timings = request.get(routes.TIMINGS) or {"total": round((time.monotonic() - t0) * 1000, 3)}
    resp.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in timings.items())
    return resp


def create_app(
    config: Config, services: Services | None = None, metrics: Metrics | None = None
) -> web.Application:
    """With ``services`` given (tests), the caller owns their lifecycle; ``metrics`` lets a
    test hand the same registry to an engine it built (the app makes one otherwise)."""
    admission = Admission(config.http.max_in_flight)
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        middlewares=[
            retry_after_middleware(config.http.retry_after_s),
            errors_and_timing,
            *auth_middlewares(config),
            admission_middleware(admission, config.http.retry_after_s),
        ],
    )
    app[ADMISSION] = admission
    metrics = tracing.install(app, metrics)  # outermost: request ids, access log, /metrics
    app[routes.OPENAPI] = orjson.dumps(build_openapi("0.1.0"))
    routes.add_routes(app)
    if services is not None:
        app[routes.SERVICES] = services
    else:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            app[routes.SERVICES] = svc = await open_services(config, observer=metrics)
            log.info(
                "serving %s model from %s with %s retrieval",
                svc.engine.kind.value,
                config.resolved_model_dir,
                svc.backend.name,
            )
            yield
            await svc.close()

        app.cleanup_ctx.append(lifecycle)
    return app
