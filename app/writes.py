"""A bounded output buffer per connection (issue 27, row 5: slow readers).

aiohttp hands a response body to the transport in one write: for a client that reads
nothing, the whole answer (a ``return_documents`` rerank can be megabytes) waits in the
process's memory until the write timeout. Here a body larger than one piece goes to the
transport a piece at a time, each once the transport has room: the transport pauses the
writer above ``write_buffer_bytes - piece`` (its high-water mark) and the next piece waits
for the client to read (aiohttp's drain). So a connection never holds more than
``write_buffer_bytes`` of unsent output in the process (plus the response head), and a
client that takes nothing for ``write_timeout_s`` is aborted (``app/protocol.py``), which
frees the rest. The kernel's socket send buffer comes on top, bounded the same way (left
to ``net.ipv4.tcp_wmem``'s autotuning it grows to MBs, outside the process's RSS but
inside a container's memory limit).

The answer itself stays in memory until it is written or the connection aborted (uvloop's
transport holds a reference to what it was given, asyncio's a copy: here at most one
piece's worth). The request's body is not needed to write it: ``app/body.py`` drops it
once the handler has answered (a ``return_documents`` rerank's body is as large as its
answer, so a stalled reader held twice its answer before).

Installed by ``GuardedServer`` (``app/protocol.py``), which makes every request's writer a
:class:`BoundedWriter`; aiohttp's own writer is otherwise unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter

PIECE = 64 * 1024  # aiohttp's own drain step (StreamWriter.write's LIMIT)


def piece_size(limit: int) -> int:
    """The piece for a buffer limit: at most :data:`PIECE`, at most half the limit."""
    return max(1, min(PIECE, limit // 2))


def limit_write_buffer(transport: asyncio.BaseTransport, limit: int) -> None:
    """The transport pauses its writer above ``limit - piece``: with the piece written on
    top, at most ``limit`` bytes wait in the process. The socket's send buffer gets the
    same bound (Linux doubles it for its bookkeeping): left to autotuning it took 2.7 MB
    of a stalled reader's answer, kernel memory that a container's cgroup is charged for."""
    high = limit - piece_size(limit)
    tr: Any = transport
    tr.set_write_buffer_limits(high=high, low=high // 4)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)


class BoundedWriter(StreamWriter):
    """aiohttp's ``StreamWriter``, writing a large last chunk (a whole ``web.Response``
    body) in pieces with back-pressure instead of in one transport write."""

    def __init__(self, protocol: BaseProtocol, loop: asyncio.AbstractEventLoop, piece: int):
        super().__init__(protocol, loop)
        self.piece = piece

    async def write_eof(self, chunk: bytes = b"") -> None:
        if len(chunk) <= self.piece or self._eof:
            await super().write_eof(chunk)
            return
        view, at = memoryview(chunk), 0
        while len(view) - at > self.piece:
            await self.write(view[at : at + self.piece], drain=False)
            at += self.piece
            await self.drain()  # waits while the transport holds more than its high-water mark
        await super().write_eof(view[at:])  # type: ignore[arg-type]  # any buffer will do


RequestFactory = Callable[..., Any]


def bounded_writes(factory: RequestFactory, limit: int) -> RequestFactory:
    """``factory`` (aiohttp's ``request_factory``) with every request's writer bounded."""
    piece = piece_size(limit)

    def make(
        message: Any, payload: Any, protocol: Any, writer: AbstractStreamWriter, *rest: Any
    ) -> Any:
        bounded = BoundedWriter(protocol, asyncio.get_running_loop(), piece)
        return factory(message, payload, protocol, bounded, *rest)

    return make


__all__ = [
    "PIECE",
    "BoundedWriter",
    "bounded_writes",
    "limit_write_buffer",
    "piece_size",
]
