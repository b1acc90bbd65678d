"""The one route table: every path the service answers and what it is. The handlers
(``app/routes.py``), auth's open paths, the quiet (access log and tracing), admin-port and
admission path lists, and ``/openapi.json``'s paths are all read from it, so a route is
named once.

A leaf: it imports nothing from ``app``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# never: no key even when the service runs with keys (probes: kubelets and load balancers
# carry none; the spec); metrics: a key unless ``--metrics-auth false``; always: a key
# whenever keys are configured.
Auth = Literal["never", "metrics", "always"]


@dataclass(frozen=True)
class Route:
    path: str
    method: Literal["GET", "POST"]
    auth: Auth = "always"
    scoring: bool = False  # queues model work: bounded by admission, moves its bound
    quiet: bool = False  # probes and scrapes: successes log at DEBUG and are not traced
    admin: bool = False  # served on the admin port (``--admin-port``) too


SEARCH = Route("/v1/search", "POST", scoring=True)
RERANK_V1 = Route("/v1/rerank", "POST", scoring=True)
RERANK_V2 = Route("/v2/rerank", "POST", scoring=True)
RERANK_TEI = Route("/rerank", "POST", scoring=True)
HEALTHZ = Route("/healthz", "GET", auth="never", quiet=True, admin=True)
READYZ = Route("/readyz", "GET", auth="never", quiet=True, admin=True)
OPENAPI = Route("/openapi.json", "GET", auth="never")
METRICS = Route("/metrics", "GET", auth="metrics", quiet=True, admin=True)

ROUTES: tuple[Route, ...] = (
    SEARCH,
    RERANK_V1,
    RERANK_V2,
    RERANK_TEI,
    HEALTHZ,
    READYZ,
    OPENAPI,
    METRICS,
)

SCORING_PATHS = frozenset(r.path for r in ROUTES if r.scoring)
QUIET_PATHS = frozenset(r.path for r in ROUTES if r.quiet)
ADMIN_PATHS = frozenset(r.path for r in ROUTES if r.admin)
ALWAYS_OPEN = frozenset(r.path for r in ROUTES if r.auth == "never")


def open_paths(metrics_auth: bool) -> frozenset[str]:
    """The paths that need no key when the service runs with keys."""
    if metrics_auth:
        return ALWAYS_OPEN
    return ALWAYS_OPEN | {r.path for r in ROUTES if r.auth == "metrics"}


__all__ = [
    "ADMIN_PATHS",
    "ALWAYS_OPEN",
    "METRICS",
    "QUIET_PATHS",
    "ROUTES",
    "SCORING_PATHS",
    "Route",
    "open_paths",
]
