"""The shutdown order a rolling update needs: the drain's state and its steps.

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

``app/server.py``'s ``serve`` runs the listener and calls these steps in this order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from app.http import InFlight

log = logging.getLogger("app.shutdown")


@dataclass
class Drain:
    """Whether the process is stopping; mutable on purpose (the app is frozen once it runs).
    What is still in flight it reads from the app's one count."""

    in_flight: InFlight
    since: float | None = None
    _cancelled_before: int = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def cancelled(self) -> int:
        """Requests cancelled since the drain began (at the drain timeout)."""
        return self.in_flight.cancelled - self._cancelled_before if self.active else 0

    def begin(self) -> None:
        self.since = time.monotonic()
        self._cancelled_before = self.in_flight.cancelled


DRAINING: web.AppKey[Drain] = web.AppKey("draining")


def install(app: web.Application, in_flight: InFlight) -> Drain:
    """Give ``app`` a drain flag (read by ``/readyz``) and close connections while it is
    up; call before the app is started."""
    drain = Drain(in_flight)
    app[DRAINING] = drain

    async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
        if drain.active:
            # The header is decided before this hook runs: set it as well as closing.
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(close_when_draining)
    return drain


@dataclass
class StopSignals:
    """SIGTERM/SIGINT as two events: ``stop`` (begin the drain) and ``hurry`` (skip the
    grace: SIGINT, or a second signal)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)

    def on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.info("%s again: skipping the rest of the grace", sig.name)
            self.hurry.set()
            return
        self.stop.set()
        if sig is signal.SIGINT:
            self.hurry.set()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def grace(drain: Drain, signals: StopSignals, grace_s: float, drain_timeout_s: float) -> None:
    """Steps 1 and 2: /readyz 503 and ``Connection: close`` from now on; the listener stays
    open for the grace (or until ``hurry``). The caller then closes it (steps 3 and 4)."""
    drain.begin()
    log.info(
        "stopping: /readyz is 503; new connections accepted for %.1fs more",
        0.0 if signals.hurry.is_set() else grace_s,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(signals.hurry.wait(), grace_s)
    log.info(
        "closing the listener; %d request(s) in flight get up to %.1fs",
        drain.in_flight.now,
        drain_timeout_s,
    )


def report(drain: Drain) -> None:
    if drain.since is None:
        return
    took = time.monotonic() - drain.since
    if drain.cancelled:
        log.warning(
            "stopped %.2fs after the signal; %d request(s) cancelled at the drain timeout",
            took,
            drain.cancelled,
        )
    else:
        log.info("stopped %.2fs after the signal; every request in flight finished", took)
