"""What every HTTP module shares: the app and request keys, the in-flight count, and the
response builders (JSON, response models, and the one error shape).

A leaf on purpose: it imports nothing from ``app`` but ``app.logs`` (the types named in the
keys are imported for the type checker only), so any module may import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from app.logs import REQUEST_ID

if TYPE_CHECKING:
    from app.meta import RequestMeta
    from app.services import Services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class InFlight:
    """Requests being handled now, counted once (by the tracing middleware) and read by
    admission (its bound), the drain (what is left to finish) and the metrics gauge.

    ``scoring`` is the share on the scoring routes (``app/paths.py``) admitted past the
    bound: probes and scrapes must neither take a slot nor be refused one. Mutable on
    purpose (the app is frozen once it runs)."""

    now: int = 0
    scoring: int = 0
    peak_scoring: int = 0
    rejected: int = 0
    cancelled: int = 0  # handlers cancelled (client gone, drain timeout), ever

    def admit(self, limit: int) -> bool:
        if self.scoring >= limit:
            self.rejected += 1
            return False
        self.scoring += 1
        self.peak_scoring = max(self.peak_scoring, self.scoring)
        return True

    def release(self) -> None:
        self.scoring -= 1


SERVICES: web.AppKey[Services] = web.AppKey("services")
OPENAPI = web.AppKey("openapi", bytes)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
ADMIN_PORTS: web.AppKey[set[int]] = web.AppKey("admin_ports")  # filled once it listens
# Set by a scoring handler: what the request did (stages, counts, partial).
META: web.RequestKey[RequestMeta] = web.RequestKey("meta")


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def json_depth(value: object) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    """A response model written by pydantic-core. ``exclude_unset``: an optional field the
    handler did not set is left out (a rerank result carries ``document`` only when asked)."""
    body = model.__pydantic_serializer__.to_json(model, exclude_unset=True)
    return web.Response(body=body, status=status, content_type="application/json")


def error_body(code: str, message: str, request_id: str | None, field: str | None = None) -> bytes:
    """The one error body, for the app's answers and the connection-level ones
    (``app/protocol.py``) alike. Its request id (also in ``X-Request-ID``) finds the log
    lines."""
    err = {"code": code, "message": message, "field": field, "request_id": request_id}
    return orjson.dumps({"error": err})


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """:func:`error_body` as a response, with the request's id."""
    body = error_body(code, message, REQUEST_ID.get(), field)
    return web.Response(body=body, status=status, content_type="application/json")
