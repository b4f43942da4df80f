"""The client's relay connection against a hostile relay (a fake server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kith.client.relay import RelayClient, RelayProtocolError
from kith.crypto.signing import SigningKey
from kith.protocol import relay as p

BLOCK = 256
WINDOW = 4
HELLO = p.encode(p.Hello(1, 1, bytes(32), BLOCK, WINDOW))

Script = Callable[[ServerConnection], Awaitable[None]]


async def fake_relay(script: Script) -> AsyncIterator[str]:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(HELLO)
        with contextlib.suppress(ConnectionClosed):
            await script(ws)
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def corr_of(frame: bytes) -> int:
    return int.from_bytes(frame[2:6], "big")


async def answer_ok(ws: ServerConnection) -> int:
    frame = await ws.recv()
    assert isinstance(frame, bytes)
    await ws.send(p.encode(p.Ok(corr_of(frame))))
    return corr_of(frame)


def msg(rid: bytes, i: int) -> bytes:
    return p.encode(p.Msg(rid, i.to_bytes(16, "big"), 0, bytes(BLOCK)))


@pytest.fixture
def rid() -> bytes:
    return b"R" * 16


async def test_a_flood_beyond_the_window_is_a_protocol_error(rid: bytes) -> None:
    async def script(ws: ServerConnection) -> None:
        await answer_ok(ws)  # SUB
        for i in range(200):  # far beyond the announced window
            await ws.send(msg(rid, i))

    async for url in fake_relay(script):
        client = await RelayClient.connect(url)
        await client.subscribe(rid, SigningKey.generate())
        got = 0
        with pytest.raises(RelayProtocolError):
            while True:
                await client.next_message(timeout=5)
                got += 1
        # What the window allows (with slack for a re-subscription race), and not one more.
        assert got == 2 * WINDOW
        assert client.messages.qsize() == 0
        await client.close()


async def test_pushes_for_queues_not_subscribed_are_dropped(rid: bytes) -> None:
    async def script(ws: ServerConnection) -> None:
        for i in range(1000):
            await ws.send(msg(b"X" * 16, i))
            await ws.send(p.encode(p.End(b"X" * 16)))
        await answer_ok(ws)  # the PING is answered with OK, which is wrong for a PING

    async for url in fake_relay(script):
        client = await RelayClient.connect(url)
        with pytest.raises(RelayProtocolError):
            await client.ping()  # the fake answers OK to a PING: a real protocol error
        assert client.dropped == 1000
        assert client.messages.qsize() == 0 and client.ended.qsize() == 0
        await client.close()


async def test_a_late_reply_to_a_cancelled_call_does_not_break_the_connection() -> None:
    async def script(ws: ServerConnection) -> None:
        first = await ws.recv()
        assert isinstance(first, bytes)
        await asyncio.sleep(0.5)  # answer the first PING late, after the caller gave up
        await ws.send(p.encode(p.Pong(corr_of(first))))
        second = await ws.recv()
        assert isinstance(second, bytes)
        await ws.send(p.encode(p.Pong(corr_of(second))))

    async for url in fake_relay(script):
        client = await RelayClient.connect(url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.ping()
        await asyncio.sleep(0.6)  # the late PONG arrives now
        await client.ping()  # the connection is still good
        await client.close()
