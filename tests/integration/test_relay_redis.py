"""Several relay processes over one Redis, and a Redis that goes away and comes back.

Real processes: a redis-server the test starts and stops, and `kith relay serve` processes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kith.client.relay import RelayClient, RelayRefused
from kith.crypto.signing import SigningKey
from kith.protocol import relay as p
from tests.support import RedisServer, RelayProcess

pytestmark = [pytest.mark.integration, pytest.mark.redis]

BLOCK = 512


def block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (BLOCK // 4)


@pytest.fixture
def redis(tmp_path: Path) -> RedisServer:
    server = RedisServer(tmp_path)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def relay_on(redis: RedisServer) -> RelayProcess:
    return RelayProcess("--store", "redis", "--redis-url", redis.url, "--block-size", str(BLOCK))


async def test_message_sent_through_one_relay_is_pushed_by_another(redis: RedisServer) -> None:
    a, b = relay_on(redis), relay_on(redis)
    try:
        key = SigningKey.generate()
        async with await RelayClient.connect(a.url) as sender, \
                await RelayClient.connect(b.url) as recipient:
            rid, sid = await sender.create_queue(key)  # created through A
            await recipient.subscribe(rid, key)  # subscribed through B
            for i in range(50):
                await sender.send(sid, block(i))  # sent through A
            got = []
            for _ in range(50):
                m = await recipient.next_message(timeout=10)  # pushed by B
                got.append(m.body)
                await recipient.ack(rid, m.msg_id)
            assert got == [block(i) for i in range(50)]
    finally:
        a.stop()
        b.stop()


async def test_redis_outage_refuses_sends_and_recovers_by_itself(redis: RedisServer) -> None:
    relay = relay_on(redis)
    try:
        key = SigningKey.generate()
        async with await RelayClient.connect(relay.url) as client:
            rid, sid = await client.create_queue(key)
            await client.subscribe(rid, key)
            await client.send(sid, block(1))
            first = await client.next_message(timeout=10)
            await client.ack(rid, first.msg_id)

            redis.stop()
            started = time.monotonic()
            with pytest.raises(RelayRefused) as info:
                await client.send(sid, block(2))
            assert info.value.code == p.ErrorCode.STORE_UNAVAILABLE
            assert time.monotonic() - started < 10, "a refusal must come promptly"
            # The relay itself stays up and answers what needs no storage.
            await client.ping()

            redis.start()  # same port, same data directory (append-only file)
            deadline = time.monotonic() + 30
            while True:
                try:
                    await client.send(sid, block(3))
                    break
                except RelayRefused as exc:
                    assert exc.code == p.ErrorCode.STORE_UNAVAILABLE
                    assert time.monotonic() < deadline, "relay did not recover"
                    await asyncio.sleep(0.5)
            # The message sent after recovery is pushed to the existing subscription: the
            # relay re-subscribed its notifications by itself. Message 2 was never stored.
            got = await client.next_message(timeout=15)
            assert got.body == block(3)
            await client.ack(rid, got.msg_id)
    finally:
        relay.stop()
