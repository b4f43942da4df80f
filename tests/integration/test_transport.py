"""The client's relay pool against a real relay on 127.0.0.1: reconnect, resubscribe, SOCKS5."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kith.client.relay import RelayClient, RelayUnreachable
from kith.client.transport import Backoff, ConnectionState, RelayPool
from kith.crypto.signing import SigningKey
from kith.protocol import relay as p
from kith.relay.core import RelayConfig
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.sqlite import SQLiteStore
from tests.socks5 import Socks5Proxy

BLOCK = 512
FAST = Backoff(initial=0.05, maximum=0.5)


class Relay:
    """An in-process relay that can be stopped and started again on the same port and db."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self.server: RelayServer | None = None

    async def start(self) -> None:
        cfg = ServerConfig(port=self.port, relay=RelayConfig(block_size=BLOCK))
        self.server = RelayServer(SQLiteStore(self.db), cfg)
        await self.server.start()
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    r = Relay(tmp_path / "relay.db")
    await r.start()
    yield r
    await r.stop()


class Inbox:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.states: list[tuple[str, ConnectionState]] = []
        self.pool: RelayPool | None = None
        self.arrived = asyncio.Event()

    async def on_message(self, url: str, msg: p.Msg) -> None:
        """Record a message once its ACK is answered: delivery on the wire is at-least-once
        (an ACK lost with the connection means the relay pushes the message again)."""
        assert self.pool is not None
        await self.pool.ack(url, msg.recipient_id, msg.msg_id)
        self.got.append(msg.body)
        self.arrived.set()

    def on_state(self, url: str, state: ConnectionState) -> None:
        self.states.append((url, state))

    async def wait_for(self, n: int, timeout: float = 10) -> None:
        await self.wait_until(lambda: len(self.got) >= n, timeout)

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.arrived.clear()
                await self.arrived.wait()


def block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (BLOCK // 4)


def make_pool(inbox: Inbox, proxy: str | None = None) -> RelayPool:
    pool = RelayPool(inbox.on_message, on_state=inbox.on_state, proxy=proxy, backoff=FAST,
                     connect_timeout=2)
    inbox.pool = pool
    return pool


async def send_eventually(pool: RelayPool, url: str, sid: bytes, key: SigningKey, body: bytes,
                          timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await pool.send(url, sid, key, body)
            except RelayUnreachable:
                await asyncio.sleep(0.1)
            else:
                return


async def test_pool_reconnects_and_resubscribes_after_relay_restart(relay: Relay) -> None:
    inbox = Inbox()
    pool = make_pool(inbox)
    try:
        rkey, skey = SigningKey.generate(), SigningKey.generate()
        rid, sid, bs = await pool.create_queue(relay.url, rkey)
        assert bs == BLOCK
        await pool.secure(relay.url, rid, rkey, skey.public_key)
        await pool.subscribe(relay.url, rid, rkey)
        await pool.send(relay.url, sid, skey, block(1))
        await inbox.wait_for(1)

        await relay.stop()
        with pytest.raises(RelayUnreachable):
            await pool.send(relay.url, sid, skey, block(2))
        await relay.start()
        # SAUTH is proven again on the new connection automatically.
        await send_eventually(pool, relay.url, sid, skey, block(2))
        await inbox.wait_for(2)
        assert inbox.got == [block(1), block(2)]
        states = [s for _, s in inbox.states]
        assert states.count(ConnectionState.CONNECTED) >= 2
        assert ConnectionState.DISCONNECTED in states
    finally:
        await pool.close()


async def test_pool_through_socks5_proxy_survives_proxy_restart(relay: Relay) -> None:
    proxy = Socks5Proxy()
    await proxy.start()
    inbox = Inbox()
    pool = make_pool(inbox, proxy=proxy.url)
    try:
        rkey, skey = SigningKey.generate(), SigningKey.generate()
        rid, sid, _ = await pool.create_queue(relay.url, rkey)
        await pool.subscribe(relay.url, rid, rkey)
        await pool.send(relay.url, sid, skey, block(1))
        await inbox.wait_for(1)
        assert proxy.connections == 1, "traffic must go through the proxy"

        port = proxy.port
        await proxy.stop()
        with pytest.raises(RelayUnreachable):
            async with asyncio.timeout(5):
                while True:  # until the pool notices the cut
                    await pool.send(relay.url, sid, skey, block(99))
                    await asyncio.sleep(0.05)
        proxy2 = Socks5Proxy()
        await proxy2.start(port)
        try:
            await send_eventually(pool, relay.url, sid, skey, block(2))
            # Everything the relay acknowledged arrives, each exactly once, in order.
            await inbox.wait_until(lambda: block(2) in inbox.got)
            delivered = [b for b in inbox.got if b != block(99)]
            assert delivered == [block(1), block(2)]
            assert proxy2.connections >= 1
        finally:
            await proxy2.stop()
    finally:
        await pool.close()
        await proxy.stop()


async def test_proxy_refuses_destinations_off_this_machine() -> None:
    proxy = Socks5Proxy()
    await proxy.start()
    pool = make_pool(Inbox(), proxy=proxy.url)
    try:
        with pytest.raises(RelayUnreachable):
            await pool.create_queue("ws://192.0.2.1:7650", SigningKey.generate())
        assert proxy.connections == 0
    finally:
        await pool.close()
        await proxy.stop()


async def test_after_a_reconnect_subscriptions_are_restored_in_one_round_trip(
    relay: Relay,
) -> None:
    """Over a slow circuit (0.1 s each way, like Tor), forty subscriptions come back after a
    relay restart, and their messages arrive, in a few round trips, not forty: one SUB (or
    one ACK) per round trip would take at least 40 x 0.2 = 8 s."""
    proxy = Socks5Proxy(latency=0.1)
    await proxy.start()
    inbox = Inbox()
    acks: set[asyncio.Task[None]] = set()

    async def on_message(url: str, msg: p.Msg) -> None:
        # As the client service does: record, then acknowledge without waiting for the OK.
        inbox.got.append(msg.body)
        inbox.arrived.set()
        assert inbox.pool is not None
        task = asyncio.ensure_future(inbox.pool.ack(url, msg.recipient_id, msg.msg_id))
        acks.add(task)
        task.add_done_callback(acks.discard)

    inbox.on_message = on_message  # type: ignore[method-assign]
    pool = make_pool(inbox, proxy=proxy.url)
    n = 40
    try:
        async with await RelayClient.connect(relay.url) as direct:
            keys = [SigningKey.generate() for _ in range(n)]
            queues = [await direct.create_queue(k) for k in keys]
        await asyncio.gather(*(pool.subscribe(relay.url, rid, k)
                               for k, (rid, _) in zip(keys, queues, strict=True)))
        await relay.stop()
        await relay.start()
        started = time.monotonic()
        async with await RelayClient.connect(relay.url) as direct:
            for i, (_, sid) in enumerate(queues):
                await direct.send(sid, block(i))
        await inbox.wait_for(n, timeout=20)
        elapsed = time.monotonic() - started
        assert sorted(inbox.got) == sorted(block(i) for i in range(n))
        assert elapsed < 5, f"subscriptions took {elapsed:.1f} s to come back"
    finally:
        await pool.close()
        await proxy.stop()
