"""Optional bearer API keys. With no key configured every path is open (the default, for a
service behind a private network); with keys, every path needs one except the health
probes (kubelets and load balancers carry no key) and, unless restricted, ``/metrics``.
Scrape-only keys (``--metrics-keys-file``) open ``/metrics`` and nothing else.
One rule on every listener: the admin port (``--admin-port``) runs the same middleware, so
its ``/metrics`` needs a key whenever the data port's does.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from app import paths
from app.config import Config
from app.http import Handler, error_response


class KeySourceError(ValueError):
    """A configured key source that yields no key: a start-up error, never "no auth"."""


def _keys(lines: list[str]) -> set[bytes]:
    return {k.strip().encode() for k in lines if k.strip()}


def _read_keys(path: Path, setting: str) -> frozenset[bytes]:
    try:
        keys = _keys(path.read_text().splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        what = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KeySourceError(f"{setting}: cannot read {path}: {what}") from exc
    if not keys:
        raise KeySourceError(f"{setting} {path} holds no key (a blank secret would turn auth off)")
    return frozenset(keys)


def load_keys(config: Config) -> frozenset[bytes]:
    """Keys from ``api_keys`` (comma-separated) and ``api_keys_file`` (one per line).

    Fails closed: a key file that is missing, unreadable or blank (a mis-mounted secret)
    raises instead of leaving the service open; so does a blank ``api_keys``."""
    keys = _keys((config.http.api_keys or "").split(","))
    if config.http.api_keys is not None and not keys:
        raise KeySourceError("api_keys is set but holds no key (unset it to run without auth)")
    path = config.http.api_keys_file
    return frozenset(keys | (_read_keys(path, "api_keys_file") if path is not None else set()))


def load_metrics_keys(config: Config) -> frozenset[bytes]:
    """Scrape-only keys (``metrics_keys_file``): they open ``/metrics`` and nothing else,
    so the scraper's secret is no API key. Fails closed like :func:`load_keys`."""
    path = config.http.metrics_keys_file
    if path is not None and not config.http.metrics_auth:
        raise KeySourceError("metrics_keys_file is set but metrics_auth is false (/metrics open)")
    return frozenset() if path is None else _read_keys(path, "metrics_keys_file")


def open_paths(config: Config) -> frozenset[str]:
    """The route table's open paths under this config (``/metrics`` per ``metrics_auth``)."""
    return paths.open_paths(config.http.metrics_auth)


def _valid(token: bytes, keys: Collection[bytes]) -> bool:
    # Compare against every key, each in constant time: neither the match nor its position
    # in the list shows in the timing.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token, key)
    return ok


def auth_middleware(
    keys: Collection[bytes], open_: Collection[str], metrics_keys: Collection[bytes] = ()
) -> Middleware:
    """``keys`` open every path (none: the API is open); ``metrics_keys`` open ``/metrics``
    only; ``open_`` needs none."""
    scrape = frozenset(keys) | frozenset(metrics_keys)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_:
            return await handler(request)
        accepted = scrape if request.path == paths.METRICS.path else keys
        if not accepted:  # no API key configured: only /metrics is guarded
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _valid(
            token.strip().encode(errors="replace"), accepted
        ):
            resp = error_response(
                401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>"
            )
            resp.headers["WWW-Authenticate"] = 'Bearer realm="rerank"'
            return resp
        return await handler(request)

    return check


def auth_middlewares(config: Config) -> list[Middleware]:
    """Empty when no key is configured: no per-request cost at all."""
    keys, metrics_keys = load_keys(config), load_metrics_keys(config)
    if not keys and not (metrics_keys and config.http.metrics_auth):
        return []
    return [auth_middleware(keys, open_paths(config), metrics_keys)]
