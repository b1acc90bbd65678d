"""Optional bearer API keys. With no key configured every path is open (the default, for a
service behind a private network); with keys, every path needs one except the health
probes (kubelets and load balancers carry no key) and, unless restricted, ``/metrics``.
One rule on every listener: the admin port (``--admin-port``) runs the same middleware, so
its ``/metrics`` needs a key whenever the data port's does.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from app import paths
from app.config import Config
from app.http import Handler, error_response


class KeySourceError(ValueError):
    """A configured key source that yields no key: a start-up error, never "no auth"."""


def _keys(lines: list[str]) -> set[bytes]:
    return {k.strip().encode() for k in lines if k.strip()}


def load_keys(config: Config) -> frozenset[bytes]:
    """Keys from ``api_keys`` (comma-separated) and ``api_keys_file`` (one per line).

    Fails closed: a key file that is missing, unreadable or blank (a mis-mounted secret)
    raises instead of leaving the service open; so does a blank ``api_keys``."""
    keys = _keys((config.http.api_keys or "").split(","))
    if config.http.api_keys is not None and not keys:
        raise KeySourceError("api_keys is set but holds no key (unset it to run without auth)")
    path = config.http.api_keys_file
    if path is not None:
        try:
            from_file = _keys(path.read_text().splitlines())
        except (OSError, UnicodeDecodeError) as exc:
            what = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise KeySourceError(f"api_keys_file: cannot read {path}: {what}") from exc
        if not from_file:
            raise KeySourceError(
                f"api_keys_file {path} holds no key (a blank secret would turn auth off)"
            )
        keys |= from_file
    return frozenset(keys)


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


def auth_middleware(keys: Collection[bytes], open_: Collection[str]) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _valid(token.strip().encode(errors="replace"), keys):
            resp = error_response(
                401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>"
            )
            resp.headers["WWW-Authenticate"] = 'Bearer realm="rerank"'
            return resp
        return await handler(request)

    return check


def auth_middlewares(config: Config) -> list[Middleware]:
    """Empty when no key is configured: no per-request cost at all."""
    keys = load_keys(config)
    return [auth_middleware(keys, open_paths(config))] if keys else []
