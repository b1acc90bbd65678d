"""The aiohttp application and serving it: the middleware chain (built in one place, so
tests run the chain production runs), the error mapping, and the graceful stop
(``app/shutdown.py`` holds its steps)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from app import __version__, otel, routes, shutdown, tracing
from app.admission import (
    AdaptiveLimit,
    LoopLag,
    StandingQueue,
    admission_middleware,
    retry_after_middleware,
)
from app.auth import auth_middlewares, load_keys, open_paths
from app.body import body_middleware, guard_expect
from app.config import Config
from app.connections import ConnCollector
from app.errors import ApiError, ClientGone, from_domain
from app.http import (
    ADMIN_PORTS,
    IN_FLIGHT,
    META,
    OPENAPI,
    SERVICES,
    Handler,
    InFlight,
    error_response,
)
from app.meta import ms
from app.metrics import METRICS, Metrics
from app.openapi import build_openapi
from app.paths import ADMIN_PATHS
from app.protocol import GuardedRunner
from app.rerank_shapes import error_shapes_middleware
from app.search import warm_up
from app.services import Services, open_services
from app.shutdown import DRAINING

log = logging.getLogger("app")


@web.middleware
async def errors_and_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Maps every exception to the one error shape, and stamps ``Server-Timing`` (the
    scoring handlers' stages, or the total alone)."""
    t0 = time.monotonic()
    try:
        resp = await handler(request)
    except ApiError as e:
        resp = error_response(e.status, e.code, e.message, e.field)
    except ClientGone as e:
        # Nobody reads this answer; the status is what the metrics and access log record.
        log.info("client went away on %s: %s", request.path, e)
        resp = web.Response(status=tracing.CLIENT_GONE)
    except web.HTTPException as e:
        resp = error_response(e.status, e.reason.lower().replace(" ", "_"), e.reason)
        if "Allow" in e.headers:  # 405: RFC 9110 requires the methods that would work
            resp.headers["Allow"] = e.headers["Allow"]
    except Exception as e:
        if (rt := otel.CURRENT.get()) is not None:
            rt.error(e)
        mapped = from_domain(e)
        if mapped is None:
            log.exception("unhandled error on %s", request.path)
            mapped = ApiError(500, "internal_error", "internal error")
        elif mapped.status >= 500:
            log.error("%s on %s: %s", mapped.code, request.path, e)
        resp = error_response(mapped.status, mapped.code, mapped.message, mapped.field)
    if resp.status in (408, 413):
        resp.force_close()  # do not wait for (or keep reading) a body we will not use
    meta = request.get(META)
    timings = meta.timings_ms() if meta is not None else {"total": ms(time.monotonic() - t0)}
    resp.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in timings.items())
    return resp


@web.middleware
async def admin_paths(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin port (``--admin-port``) serves the probes and ``/metrics`` only; auth
    runs after this, on both ports alike."""
    ports = request.app.get(ADMIN_PORTS)
    if ports and request.path not in ADMIN_PATHS and request.transport is not None:
        sock = request.transport.get_extra_info("sockname")
        if isinstance(sock, tuple) and len(sock) > 1 and sock[1] in ports:
            return error_response(404, "not_found", "the admin port serves probes and metrics")
    return await handler(request)


def middlewares(
    config: Config, in_flight: InFlight, metrics: Metrics, telemetry: otel.Telemetry | None = None
) -> list[Middleware]:
    """Outermost first: tracing sees the final status and stamps the request id on every
    answer; a route whose API has its own error body gets it; every 503 gets
    ``Retry-After``; errors are mapped before that; only requests with a valid key are
    counted against the admission bound, and only once their body is read (a slow upload
    holds no slot)."""
    bound = AdaptiveLimit(config.http.max_in_flight)
    metrics.admission_limit.set_function(lambda: bound.current)
    queue = StandingQueue(config.http.queue_target_ms / 1000, config.http.queue_interval_ms / 1000)
    return [
        tracing.middleware(metrics, in_flight, telemetry),
        admin_paths,
        error_shapes_middleware(),
        retry_after_middleware(config.http.retry_after_s),
        errors_and_timing,
        *auth_middlewares(config),
        body_middleware(config.limits.max_body_bytes, config.http.body_timeout_s),
        admission_middleware(
            in_flight,
            bound,
            config.http.retry_after_s,
            queue,
            local_wait,
            lambda reason: metrics.shed.labels(reason).inc(),
        ),
    ]


LOOP_LAG = web.AppKey("loop_lag", LoopLag)


def local_wait(app: web.Application) -> float:
    """What admission sheds on: the search thread's queue. The event loop's lateness is
    measured (``/metrics``) but not shed on: every burst lags the loop for a while (its
    requests are parsed and answered there), and shedding on it refused bursts the
    service then answered in time; a loop that stays late shows in the answers instead
    (partial, late: the adaptive bound)."""
    svc = app.get(SERVICES)
    return 0.0 if svc is None else svc.backend.queue_age()


def watch_loop(app: web.Application, metrics: Metrics) -> None:
    """Measures the event loop's lateness while the app runs, for the metrics."""
    lag = app[LOOP_LAG] = LoopLag()
    metrics.local_queue_wait.labels("event_loop").set_function(lag.now)
    metrics.local_queue_wait.labels("search_thread").set_function(lambda: local_wait(app))

    async def ticking(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(lag.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ticking)


def create_app(
    config: Config,
    services: Services | None = None,
    metrics: Metrics | None = None,
    telemetry: otel.Telemetry | None = None,
) -> web.Application:
    """With ``services`` given (tests), the caller owns their lifecycle; ``metrics`` lets a
    test hand the same registry to an engine it built (the app makes one otherwise).
    ``telemetry``: tracing (made from ``config.tracing`` when it names an endpoint and none
    is given; the app shuts it down)."""
    metrics = metrics or Metrics()
    in_flight = InFlight()
    metrics.watch(in_flight)
    if telemetry is None and config.tracing.otlp_endpoint:
        telemetry = otel.Telemetry(config.tracing)
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        middlewares=middlewares(config, in_flight, metrics, telemetry),
    )
    if telemetry is not None:
        metrics.registry.register(telemetry.collector())
        app.on_cleanup.append(lambda _: telemetry.aclose())
    app[IN_FLIGHT] = in_flight
    app[METRICS] = metrics
    watch_loop(app, metrics)
    spec = build_openapi(__version__, config, bool(load_keys(config)), open_paths(config))
    app[OPENAPI] = orjson.dumps(spec)
    shutdown.install(app, in_flight)
    routes.add_routes(app)
    guard_expect(app, config.limits.max_body_bytes)
    if services is not None:
        app[SERVICES] = services
        metrics.describe(__version__, services.engine.model_dir.name, services.engine.precision)
    else:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            es_tracer = None if telemetry is None else telemetry.es_tracer
            app[SERVICES] = svc = await open_services(config, metrics, es_tracer)
            metrics.describe(__version__, svc.engine.model_dir.name, svc.engine.precision)
            await warm_up(svc)  # /readyz answers 200 from here on
            # What start-up allocated lives as long as the process: out of the collector's
            # way, so the first full collections do not land on the first requests.
            gc.collect()
            gc.freeze()
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


def make_runner(app: web.Application, cfg: Config) -> GuardedRunner:
    """The runner ``serve`` uses (tests start the app with it too): header and keep-alive
    timeouts, the connection cap and JSON parser errors exist only here."""
    runner = GuardedRunner(
        app,
        cfg.http,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=cfg.http.drain_timeout_s,
    )
    app[METRICS].registry.register(ConnCollector(runner.stats))
    app[ADMIN_PORTS] = runner.admin_ports
    return runner


async def serve(app: web.Application, cfg: Config) -> None:
    """Run ``app`` on ``cfg.http.host:cfg.http.port`` until SIGTERM/SIGINT, then stop gracefully in
    the order ``app/shutdown.py`` describes."""
    drain = app[DRAINING]
    signals = shutdown.StopSignals()
    # Installed before the model loads, so a SIGTERM during startup still exits cleanly.
    signals.install()
    runner = make_runner(app, cfg)
    try:
        await runner.setup()  # runs the cleanup contexts up to their yield: opens Services
        if not signals.stop.is_set():
            if cfg.http.admin_port is not None:  # before the data port: probes first
                admin = web.TCPSite(runner, cfg.http.host, cfg.http.admin_port)
                runner.admin_ports.add(cfg.http.admin_port)
                await admin.start()
                runner.admin_ports.add(runner.addresses[-1][1])  # the real one, for port 0
                print(f"======== Admin on {admin.name} ========", flush=True)
            site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
            await site.start()
            print(f"======== Running on {site.name} ========", flush=True)
            await signals.stop.wait()
        await shutdown.grace(drain, signals, cfg.http.shutdown_grace_s, cfg.http.drain_timeout_s)
    finally:
        # Closes the listening sockets (new connections are refused from here on), closes
        # idle keep-alive connections, waits up to shutdown_timeout for requests in
        # flight, cancels what is left, then runs the app's cleanup (Services.close()).
        await runner.cleanup()
        signals.remove()
    shutdown.report(drain)


def run(cfg: Config) -> int:
    """The body of ``python -m app serve``: one process, uvloop, graceful stop, exit 0.

    One process on purpose: several processes sharing the port (SO_REUSEPORT) matched its
    throughput and doubled single-request latency (deploy/README.md, Sizing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        asyncio.run(serve(create_app(cfg), cfg))
    else:
        uvloop.run(serve(create_app(cfg), cfg))
    return 0
