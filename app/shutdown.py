"""Serving with the shutdown order a rolling update needs.

On SIGTERM (what Docker and Kubernetes send):

1. ``/readyz`` answers 503 at once, and every response from then on carries
   ``Connection: close``, so keep-alive clients reconnect elsewhere;
2. new connections are still accepted for ``shutdown_grace_s`` (the time load balancers and
   kube-proxy need to notice), then the listening socket is closed: new connections are
   refused;
3. requests in flight get up to ``drain_timeout_s`` to finish, then are cancelled;
4. the application's cleanup runs (``Services.close()``: the Elasticsearch client and the
   executors), and the process exits 0.

SIGINT (Ctrl+C at a terminal) skips the grace: nothing routes traffic to an interactive
process. A second signal during the grace skips the rest of it. The whole stop takes at most
``shutdown_grace_s + drain_timeout_s`` plus the cleanup, which is what
``terminationGracePeriodSeconds`` must cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from app.config import Config

log = logging.getLogger("app.shutdown")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Drain:
    """Mutable on purpose: the application is frozen once it runs."""

    since: float | None = None
    in_flight: int = 0
    cancelled: int = 0

    @property
    def active(self) -> bool:
        return self.since is not None


DRAINING = web.AppKey("draining", Drain)


def install(app: web.Application) -> Drain:
    """Give ``app`` a drain flag (read by ``/readyz``) and an in-flight count; call before
    the app is started."""
    drain = Drain()
    app[DRAINING] = drain

    @web.middleware
    async def count_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
        drain.in_flight += 1
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if drain.active:
                drain.cancelled += 1
            raise
        finally:
            drain.in_flight -= 1

    async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
        if drain.active:
            # The header is decided before this hook runs: set it as well as closing.
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    app.middlewares.append(count_in_flight)
    app.on_response_prepare.append(close_when_draining)
    return drain


async def serve(app: web.Application, cfg: Config) -> None:
    """Run ``app`` on ``cfg.host:cfg.port`` until SIGTERM/SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    drain = install(app)
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s again: skipping the rest of the grace", sig.name)
            hurry.set()
            return
        stop.set()
        if sig is signal.SIGINT:
            hurry.set()

    # Installed before the model loads, so a SIGTERM during startup still exits cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=cfg.http.drain_timeout_s
    )
    try:
        await runner.setup()  # runs the cleanup contexts up to their yield: opens Services
        if not stop.is_set():
            site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
            await site.start()
            print(f"======== Running on {site.name} ========", flush=True)
            await stop.wait()
        drain.since = time.monotonic()
        log.info(
            "stopping: /readyz is 503; new connections accepted for %.1fs more",
            0.0 if hurry.is_set() else cfg.http.shutdown_grace_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), cfg.http.shutdown_grace_s)
        log.info(
            "closing the listener; %d request(s) in flight get up to %.1fs",
            drain.in_flight,
            cfg.http.drain_timeout_s,
        )
    finally:
        # Closes the listening sockets (new connections are refused from here on), closes
        # idle keep-alive connections, waits up to shutdown_timeout for requests in
        # flight, cancels what is left, then runs the app's cleanup (Services.close()).
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if drain.since is not None:
        took = time.monotonic() - drain.since
        if drain.cancelled:
            log.warning(
                "stopped %.2fs after the signal; %d request(s) cancelled at the drain timeout",
                took,
                drain.cancelled,
            )
        else:
            log.info("stopped %.2fs after the signal; every request in flight finished", took)


def run(cfg: Config) -> int:
    """The body of ``python -m app serve``: one process, uvloop, graceful stop, exit 0.

    One process on purpose: several processes sharing the port (SO_REUSEPORT) matched its
    throughput and doubled single-request latency (deploy/README.md, Sizing)."""
    from app.server import create_app

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        asyncio.run(serve(create_app(cfg), cfg))
    else:
        uvloop.run(serve(create_app(cfg), cfg))
    return 0
