"""Aggregate metrics in the Prometheus text format, on a separate local port.

Only totals leave the relay: counts of frames, errors by code, messages stored and delivered,
open connections, store sizes. Nothing carries a queue id, a key or an address. The endpoint
binds 127.0.0.1 by default; a scraper on another host should reach it through an SSH tunnel or
a private network, never the public interface.

A deliberately tiny HTTP/1.0 responder: one request per connection, bounded read, bounded time,
so a misbehaving scraper cannot hold resources.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

_MAX_REQUEST = 8192
_TIMEOUT = 5.0


class MetricsServer:
    def __init__(self, render: Callable[[], Awaitable[str]]) -> None:
        self._render = render
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > _MAX_REQUEST:
                    raise ValueError("request too large")
                parts = head.split(b"\r\n", 1)[0].split(b" ")
                if len(parts) >= 2 and parts[0] == b"GET" and parts[1] == b"/metrics":
                    body = (await self._render()).encode()
                    status = b"200 OK"
                    ctype = b"text/plain; version=0.0.4; charset=utf-8"
                else:
                    body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
                writer.write(
                    b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype
                    + b"\r\nContent-Length: " + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n" + body
                )
                await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()
