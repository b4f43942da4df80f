"""A minimal SOCKS5 proxy for tests (RFC 1928, CONNECT, no authentication).

It forwards only to 127.0.0.1: any other destination is refused (reply 0x02, "not allowed"),
so a test can never send traffic off this machine through it. It counts the connections it
carried, so a test can prove that traffic really went through the proxy. ``latency`` delays
every byte by that many seconds in each direction, in order, as a Tor circuit would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct


class Socks5Proxy:
    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"socks5h://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop listening and cut every connection it carries."""
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            ver, nmethods = await reader.readexactly(2)
            await reader.readexactly(nmethods)
            if ver != 5:
                return
            writer.write(b"\x05\x00")
            ver, cmd, _, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
            elif atyp == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            else:
                host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
            (port,) = struct.unpack(">H", await reader.readexactly(2))
            if cmd != 1 or host not in ("127.0.0.1", "localhost"):
                self.refused += 1
                writer.write(b"\x05\x02\x00\x01" + bytes(6))
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            self._writers.add(up_writer)
            self.connections += 1
            writer.write(b"\x05\x00\x00\x01" + bytes(4) + struct.pack(">H", 0))
            await asyncio.gather(
                _pipe(reader, up_writer, self.latency), _pipe(up_reader, writer, self.latency)
            )
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float = 0.0
) -> None:
    loop = asyncio.get_running_loop()
    delayed: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await delayed.get()
            if not data:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    out = asyncio.ensure_future(deliver())
    try:
        while data := await reader.read(65536):
            delayed.put_nowait((loop.time() + latency, data))
        delayed.put_nowait((loop.time() + latency, b""))
        await out
    except (ConnectionError, OSError):
        pass
    finally:
        out.cancel()
        with contextlib.suppress(Exception):
            writer.close()
