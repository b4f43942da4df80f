"""RedisStore beyond the shared contract: several relay processes, outages, hung servers.

Every test runs a real redis-server on 127.0.0.1. "Two processes" are two RedisStore
instances with the same prefix, each with its own connections, exactly as two relay
processes would have.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from kith.errors import ConfigError, StoreUnavailable
from kith.relay.store.base import Limits, QuotaExceeded, StoredRef
from kith.relay.store.redis import RedisStore
from tests.support import RedisServer, free_port

from .conftest import Hints, have_redis, new_record

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not have_redis(), reason="redis-server is not installed"),
]

NOW = 1_700_000_000
LIMITS = Limits()
#: Outage tests use a short deadline so they stay fast; the bound asserted is the brief's 5 s.
OP_TIMEOUT = 1.0


def mid() -> bytes:
    return os.urandom(16)


@pytest.fixture
def prefix() -> str:
    return f"kith-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may stop, freeze and restart (append-only, fsync always)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


@pytest.fixture
async def stores() -> AsyncIterator[Callable[..., Any]]:
    made: list[RedisStore] = []

    async def make(url: str, prefix: str, hints: Hints | None = None, **kw: Any) -> RedisStore:
        store = RedisStore(url, prefix=prefix, **kw)
        await store.start(hints if hints is not None else Hints())
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 -- polls a status property; there is no event to await
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- two processes


async def test_put_through_one_process_hints_a_watcher_on_another(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    ha, hb = Hints(), Hints()
    a = await stores(redis_server.url, prefix, ha)
    b = await stores(redis_server.url, prefix, hb)
    rec = new_record()
    await a.create_queue(rec, NOW)
    await a.watch(rec.recipient_id)
    ref = await b.put_message(rec.sender_id, mid(), b"via b", NOW, LIMITS)
    assert ref.recipient_id == rec.recipient_id
    await ha.wait_for(rec.recipient_id)
    # B has no subscriber for this queue, so B gets no hint.
    await asyncio.sleep(0.3)
    assert hb.count(rec.recipient_id) == 0
    # And A sees the message B stored.
    [got] = await a.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert got.body == b"via b"


async def test_own_puts_are_hinted_once_not_twice(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    """The pub/sub echo of a process's own put is dropped; its hint was scheduled locally."""
    hints = Hints()
    a = await stores(redis_server.url, prefix, hints)
    rec = new_record()
    await a.create_queue(rec, NOW)
    await a.watch(rec.recipient_id)
    await a.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await hints.wait_for(rec.recipient_id)
    await asyncio.sleep(0.3)
    assert hints.count(rec.recipient_id) == 1


async def test_unwatch_stops_hints_from_other_processes(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    ha = Hints()
    a = await stores(redis_server.url, prefix, ha)
    b = await stores(redis_server.url, prefix)
    rec = new_record()
    await a.create_queue(rec, NOW)
    await a.watch(rec.recipient_id)
    await b.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await ha.wait_for(rec.recipient_id)
    await a.unwatch(rec.recipient_id)
    ha.clear()
    await b.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await asyncio.sleep(0.3)
    assert ha.count(rec.recipient_id) == 0


async def test_a_dropped_pubsub_connection_is_caught_up(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    """A put that lands while the subscriber is reconnecting is still hinted (catch-up)."""
    ha = Hints()
    a = await stores(redis_server.url, prefix, ha)
    b = await stores(redis_server.url, prefix)
    rec = new_record()
    await a.create_queue(rec, NOW)
    await a.watch(rec.recipient_id)
    raw = Redis.from_url(redis_server.url)
    try:
        assert await raw.client_kill_filter(_type="pubsub") >= 1
    finally:
        await raw.aclose()
    await b.put_message(rec.sender_id, mid(), b"in the gap", NOW, LIMITS)
    await ha.wait_for(rec.recipient_id)
    await wait_until(lambda: a.pubsub_connected)
    ha.clear()
    await b.put_message(rec.sender_id, mid(), b"after", NOW, LIMITS)
    await ha.wait_for(rec.recipient_id)


async def test_two_processes_never_break_a_quota_or_the_seq_order(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    a = await stores(redis_server.url, prefix)
    b = await stores(redis_server.url, prefix)
    rec = new_record()
    await a.create_queue(rec, NOW)
    limits = Limits(max_messages=30)
    calls = [(a if i % 2 else b, mid()) for i in range(80)]
    results = await asyncio.gather(
        *(s.put_message(rec.sender_id, m, b"x", NOW, limits) for s, m in calls),
        return_exceptions=True,
    )
    refs = [r for r in results if isinstance(r, StoredRef)]
    assert len(refs) == 30
    assert all(isinstance(r, QuotaExceeded) for r in results if not isinstance(r, StoredRef))
    assert sorted(r.seq for r in refs) == list(range(1, 31))
    # Within each process, call order is seq order.
    for s in (a, b):
        seqs = [
            r.seq
            for (st, _), r in zip(calls, results, strict=True)
            if st is s and isinstance(r, StoredRef)
        ]
        assert seqs == sorted(seqs)
    got = await b.pending(rec.recipient_id, 0, 100, NOW, limits)
    assert [m.seq for m in got] == list(range(1, 31))


async def test_keys_carry_the_prefix_and_only_random_ids(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    a = await stores(redis_server.url, prefix)
    rec = new_record(sender_key=os.urandom(32))
    await a.create_queue(rec, NOW)
    await a.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS, rec.sender_key)
    raw = Redis.from_url(redis_server.url)
    try:
        keys = sorted([k.decode() async for k in raw.scan_iter(match=f"{prefix}*")])
    finally:
        await raw.aclose()
    shape = re.compile(rf"^{re.escape(prefix)}((q|m|z):{rec.recipient_id.hex()}"
                       rf"|s:{rec.sender_id.hex()}|x|u|st)$")
    assert keys and all(shape.match(k) for k in keys), keys
    assert len(keys) == 7


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        RedisStore("http://127.0.0.1:1/")
    with pytest.raises(ConfigError):
        RedisStore("redis://127.0.0.1:1/0", prefix="")
    with pytest.raises(ConfigError):
        RedisStore("redis://127.0.0.1:1/0", op_timeout=0)


# ---------------------------------------------------------------------------- outages


async def test_start_fails_promptly_when_redis_is_not_there() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", op_timeout=OP_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.start(Hints())
    assert time.monotonic() - started < 5
    await store.close()


async def test_redis_down_refuses_every_call_promptly_then_recovers_by_itself(
    own_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    ha = Hints()
    a = await stores(own_server.url, prefix, ha, op_timeout=OP_TIMEOUT)
    b = await stores(own_server.url, prefix, op_timeout=OP_TIMEOUT)
    rec, later = new_record(), new_record()
    await a.create_queue(rec, NOW)
    await a.create_queue(later, NOW)
    [kept] = [mid()]
    await a.put_message(rec.sender_id, kept, b"before", NOW, LIMITS)
    await a.watch(rec.recipient_id)

    own_server.stop()
    calls = {
        "put": lambda: a.put_message(rec.sender_id, mid(), b"lost", NOW, LIMITS),
        "pending": lambda: a.pending(rec.recipient_id, 0, 10, NOW, LIMITS),
        "ack": lambda: a.ack(rec.recipient_id, kept),
        "create": lambda: a.create_queue(new_record(), NOW),
        "by_sender": lambda: a.queue_by_sender(rec.sender_id),
        "by_recipient": lambda: a.queue_by_recipient(rec.recipient_id),
        "secure": lambda: a.secure_queue(rec.recipient_id, os.urandom(32)),
        "delete": lambda: a.delete_queue(rec.recipient_id),
        "expire": lambda: a.expire(NOW, LIMITS),
        "stats": a.stats,
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - started < 5, name
    await wait_until(lambda: not a.pubsub_connected)
    # Watching during the outage is kept and honoured after it (with a catch-up hint).
    await a.watch(later.recipient_id)

    own_server.start()  # same port, same append-only file
    # The same store objects work again: no reconnect call, no new store.
    async with asyncio.timeout(10):
        while True:
            try:
                await b.put_message(later.sender_id, mid(), b"after", NOW, LIMITS)
                break
            except StoreUnavailable:  # Redis may answer LOADING for a moment
                await asyncio.sleep(0.1)
    got = await a.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert [m.msg_id for m in got] == [kept], "nothing refused during the outage was stored"
    assert await a.ack(rec.recipient_id, kept)
    await wait_until(lambda: a.pubsub_connected)
    await ha.wait_for(later.recipient_id)  # catch-up hint for the queue watched meanwhile
    ha.clear()
    # Hints from the other process flow again on the re-subscribed channels.
    await b.put_message(rec.sender_id, mid(), b"again", NOW, LIMITS)
    await ha.wait_for(rec.recipient_id)


async def test_closing_during_an_outage_is_prompt_and_quiet(
    own_server: RedisServer, prefix: str
) -> None:
    store = RedisStore(own_server.url, prefix=prefix, op_timeout=OP_TIMEOUT)
    await store.start(Hints())
    rec = new_record()
    await store.create_queue(rec, NOW)
    own_server.stop()
    pending = asyncio.ensure_future(store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS))
    await asyncio.sleep(0)  # the put is queued in the write lane
    started = time.monotonic()
    await store.close()
    assert time.monotonic() - started < 5
    with pytest.raises(StoreUnavailable):
        await pending


async def test_a_frozen_redis_never_hangs_a_call(
    own_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    """SIGSTOP: the socket stays open but nothing answers, like a host that dropped off."""
    a = await stores(own_server.url, prefix, op_timeout=OP_TIMEOUT, keepalive=0.2)
    rec = new_record()
    await a.create_queue(rec, NOW)
    await a.watch(rec.recipient_id)
    assert own_server.proc is not None
    own_server.proc.send_signal(signal.SIGSTOP)
    try:
        for call in (
            lambda: a.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS),
            lambda: a.pending(rec.recipient_id, 0, 10, NOW, LIMITS),
            a.stats,
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call()
            assert time.monotonic() - started < 5
        # The keep-alive notices the silent pub/sub connection too.
        await wait_until(lambda: not a.pubsub_connected, timeout=5)
    finally:
        own_server.proc.send_signal(signal.SIGCONT)
    async with asyncio.timeout(10):
        while True:
            try:
                await a.put_message(rec.sender_id, mid(), b"y", NOW, LIMITS)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
    await wait_until(lambda: a.pubsub_connected)


async def test_a_negative_byte_total_does_not_loosen_the_store_wide_cap(
    redis_server: RedisServer, stores: Callable[..., Any], prefix: str
) -> None:
    """If the aggregate hash drifts below zero (lost and rebuilt by hand, say), the cap counts
    from zero rather than from the negative total."""
    store = await stores(redis_server.url, prefix)
    rec = new_record()
    await store.create_queue(rec, NOW)
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.hset(f"{prefix}st", "bytes", -1_000_000)
    finally:
        await raw.aclose()
    cap = Limits(max_store_bytes=10)
    with pytest.raises(QuotaExceeded):
        await store.put_message(rec.sender_id, mid(), b"x" * 11, NOW, cap)
    await store.put_message(rec.sender_id, mid(), b"x" * 10, NOW, cap)
