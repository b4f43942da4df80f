"""The relay's sweep deletes abandoned queues, never one that a connected subscriber holds.

Real relays on 127.0.0.1 (in-process, so the test can hand the sweep a clock months ahead),
over the memory store and over two relays sharing one real redis-server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kith.client.relay import RelayClient, RelayRefused
from kith.crypto.signing import SigningKey
from kith.protocol import relay as p
from kith.relay.core import RelayConfig
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.base import USE_GRANULE, Limits, Store
from kith.relay.store.memory import MemoryStore
from tests.support import RedisServer

BLOCK = 512
LIMITS = Limits(queue_ttl_seconds=90 * 24 * 3600)
#: Far enough ahead that every queue not used since the test began is past its TTL.
LATER = LIMITS.queue_ttl_seconds + USE_GRANULE + 3600


def block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (BLOCK // 4)


def url(relay: RelayServer) -> str:
    return f"ws://127.0.0.1:{relay.port}"


async def started(store: Store) -> RelayServer:
    cfg = ServerConfig(port=0, relay=RelayConfig(block_size=BLOCK, window=4, limits=LIMITS))
    server = RelayServer(store, cfg)
    await server.start()
    return server


@pytest.fixture
async def memory_relay() -> AsyncIterator[RelayServer]:
    server = await started(MemoryStore())
    yield server
    await server.stop()


async def test_the_sweep_keeps_a_held_queue_and_deletes_abandoned_ones(
    memory_relay: RelayServer,
) -> None:
    relay = memory_relay
    async with await RelayClient.connect(url(relay)) as alice, \
            await RelayClient.connect(url(relay)) as bob:
        held_key = SigningKey.generate()
        held_rid, held_sid = await alice.create_queue(held_key)
        lost_key = SigningKey.generate()
        lost_rid, lost_sid = await alice.create_queue(lost_key)
        await bob.send(lost_sid, block(1))
        await alice.subscribe(held_rid, held_key)
        later = int(time.time()) + LATER
        # Alice stays connected, never re-subscribing, for longer than the queue TTL.
        await relay.sweep_once(later)
        assert relay.counters.values.get("queues_expired") == 1
        # Her queue still works on the same subscription...
        await bob.send(held_sid, block(2))
        m = await alice.next_message(timeout=5)
        assert m.body == block(2)
        await alice.ack(held_rid, m.msg_id)
        # ...the abandoned one is gone: its sender id and its owner are refused alike.
        with pytest.raises(RelayRefused) as info:
            await bob.send(lost_sid, block(3))
        assert info.value.code == p.ErrorCode.AUTH
        with pytest.raises(RelayRefused):
            await alice.subscribe(lost_rid, lost_key)
        stats = await relay.store.stats()
        assert stats == {"queues": 1, "messages": 0, "bytes": 0}

    # Once nobody holds it and nobody uses it for a TTL, the held queue goes too.
    for _ in range(100):
        if not relay._subscribers:
            break
        await asyncio.sleep(0.01)
    await relay.sweep_once(later + LATER)
    assert (await relay.store.stats())["queues"] == 0


@pytest.mark.integration
@pytest.mark.redis
async def test_a_queue_held_through_one_relay_survives_the_sweep_of_another(
    tmp_path: Path,
) -> None:
    """Two relays over one Redis: the one holding the subscription marks the queue, so the
    other one's sweep, which cannot see that subscription, does not delete it."""
    from kith.relay.store.redis import RedisStore
    from tests.unit.relay.conftest import have_redis

    if not have_redis():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    prefix = f"kith-test-{uuid.uuid4().hex[:12]}:"
    a = await started(RedisStore(server.url, prefix=prefix))
    b = await started(RedisStore(server.url, prefix=prefix))
    try:
        async with await RelayClient.connect(url(a)) as alice, \
                await RelayClient.connect(url(b)) as bob:
            key = SigningKey.generate()
            rid, sid = await alice.create_queue(key)
            _, lost_sid = await bob.create_queue(SigningKey.generate())
            await alice.subscribe(rid, key)  # held through relay A only
            later = int(time.time()) + LATER
            await a.sweep_once(later)  # A marks what it holds (and removes the lost queue)
            await b.sweep_once(later)  # B sees no subscription for it
            await bob.send(sid, block(7))  # through B
            m = await alice.next_message(timeout=5)  # pushed by A
            assert m.body == block(7)
            with pytest.raises(RelayRefused):
                await bob.send(lost_sid, block(8))
            assert (await b.store.stats())["queues"] == 1
    finally:
        await a.stop()
        await b.stop()
        server.stop()
