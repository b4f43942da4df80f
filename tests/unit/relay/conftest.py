"""Fixtures for the relay store tests: every backend, started for real.

Redis runs as a real ``redis-server`` on 127.0.0.1 (``tests.support.RedisServer``), one per
test module; each test gets its own key prefix, so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kith.relay.store.base import NotifyFn, QueueRecord, Store
from tests.support import REDIS_SERVER, RedisServer

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
]


def have_redis() -> bool:
    return shutil.which("redis-server") is not None or os.path.exists(REDIS_SERVER)


class Hints:
    """A notify callback that records every hint and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self._changed = asyncio.Event()

    def __call__(self, recipient_id: bytes, seq: int | None = None) -> None:
        self.seen.append(recipient_id)
        self._changed.set()

    def count(self, recipient_id: bytes) -> int:
        return self.seen.count(recipient_id)

    async def wait_for(self, recipient_id: bytes, n: int = 1, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.count(recipient_id) < n:
                self._changed.clear()
                await self._changed.wait()

    def clear(self) -> None:
        self.seen.clear()


def new_record(sender_key: bytes | None = None) -> QueueRecord:
    return QueueRecord(os.urandom(16), os.urandom(16), os.urandom(32), sender_key)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not have_redis():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Start stores of the test's backend that share one queue space (same Redis prefix,
    same SQLite file once the previous one is closed); all are closed at the end."""
    started: list[Store] = []
    prefix = f"kith-test-{uuid.uuid4().hex[:12]}:"
    redis_url = None
    if backend == "redis":
        redis_url = request.getfixturevalue("redis_server").url

    async def make(notify: NotifyFn | None = None) -> Store:
        store: Store
        if backend == "memory":
            from kith.relay.store.memory import MemoryStore

            store = MemoryStore()
        elif backend == "sqlite":
            from kith.relay.store.sqlite import SQLiteStore

            store = SQLiteStore(tmp_path / "relay.db")
        else:
            from kith.relay.store.redis import RedisStore

            assert redis_url is not None
            store = RedisStore(redis_url, prefix=prefix)
        await store.start(notify if notify is not None else Hints())
        started.append(store)
        return store

    yield make
    for store in started:
        await store.close()


@pytest.fixture
def hints() -> Hints:
    return Hints()


@pytest.fixture
async def store(make_store: StoreFactory, hints: Hints) -> Store:
    return await make_store(hints)
