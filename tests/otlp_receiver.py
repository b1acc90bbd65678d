"""An OTLP/HTTP trace receiver on a loopback port, decoding with the official
``opentelemetry-proto`` messages: what a collector would get from the service. It can
also hang (accept an export and not answer until released) or refuse (HTTP 503), the two
ways a collector fails a service.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

Mode = Literal["ok", "hang", "refuse"]


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in span.attributes}


@dataclass
class Receiver:
    mode: Mode = "ok"
    spans: list[Span] = field(default_factory=list)
    services: set[str] = field(default_factory=set)  # resource service.name values seen
    exports: int = 0
    hung: asyncio.Event = field(default_factory=asyncio.Event)  # an export is being held
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def traces(self, request: web.Request) -> web.Response:
        self.exports += 1
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.mode == "hang":
            self.hung.set()
            await self.release.wait()
        if self.mode == "refuse":
            return web.Response(status=503, text="collector refusing")
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(body)
        for rs in msg.resource_spans:
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    self.services.add(value(kv.value))
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def of_trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id.hex() == trace_id]


@asynccontextmanager
async def receiver(mode: Mode = "ok") -> AsyncIterator[Receiver]:
    rec = Receiver(mode)
    app = web.Application()
    app.router.add_post("/v1/traces", rec.traces)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.url = str(server.make_url("")).rstrip("/")
    try:
        yield rec
    finally:
        rec.release.set()  # a held export answers, so the exporter thread is free
        await server.close()
