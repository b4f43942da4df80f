"""Fixtures for the client service tests: real vaults in tmp_path, real relays on 127.0.0.1.

Every profile uses the insecure-fast Argon2id parameters through the vault tests' loudly named
fixture (imported, not copied), and short timings, so a test that pairs two profiles and
exchanges messages takes well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kith.client.events import Event
from kith.client.model import ContactInfo, ContactState
from kith.client.service import ClientOptions, ClientService, EventStream
from kith.client.transport import Backoff
from kith.crypto.kdf import Argon2idParams
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.sqlite import SQLiteStore
from tests.unit.vault.conftest import insecure_fast_params_for_tests_only  # noqa: F401 (fixture)

PASSPHRASE = "a passphrase for tests only"  # noqa: S105 (a test profile's passphrase)
T0 = 1_760_000_000.0

FAST = ClientOptions(
    connect_timeout=1.0,
    backoff=Backoff(initial=0.05, maximum=0.5, jitter=0.1),
    settle=0.3,
    gap_grace=0.3,
    sweep_interval=0.5,
    accept_timeout=3.0,
)


class Clock:
    """A wall clock the test moves by hand (invitation expiry, disappearing messages)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Relay:
    """An in-process relay on 127.0.0.1 with a SQLite store, restartable on the same port."""

    def __init__(self, db: pathlib.Path) -> None:
        self.db = db
        self.port = 0
        self.server: RelayServer | None = None

    async def start(self) -> None:
        self.server = RelayServer(SQLiteStore(self.db), ServerConfig(port=self.port))
        await self.server.start()
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def count(self, table: str) -> int:
        """Rows in the relay's ``queues`` or ``messages`` table, read from its file."""
        if table not in ("queues", "messages"):
            raise ValueError(table)
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 (fixed names)


@pytest.fixture
async def relay(tmp_path: pathlib.Path) -> AsyncIterator[Relay]:
    r = Relay(tmp_path / "relay.db")
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def relay2(tmp_path: pathlib.Path) -> AsyncIterator[Relay]:
    r = Relay(tmp_path / "relay2.db")
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeProfile = Callable[..., Awaitable[ClientService]]


@pytest.fixture
async def make_profile(
    tmp_path: pathlib.Path,
    relay: Relay,
    clock: Clock,
    insecure_fast_params_for_tests_only: Argon2idParams,  # noqa: F811 (the imported fixture)
) -> AsyncIterator[MakeProfile]:
    """Create a profile under tmp_path (on ``relay`` unless told otherwise); every service
    made here is locked at the end of the test."""
    made: list[ClientService] = []

    async def make(
        name: str,
        *,
        relay_url: str | None = None,
        clock_: Callable[[], float] | None = None,
        options: ClientOptions = FAST,
        proxy: str | None = None,
    ) -> ClientService:
        service = await ClientService.create(
            tmp_path / name,
            PASSPHRASE,
            params=insecure_fast_params_for_tests_only,
            relay_url=relay_url or relay.url,
            clock=clock_ or clock,
            allow_insecure_params_for_tests=True,
            options=options,
            proxy=proxy,
        )
        made.append(service)
        return service

    yield make
    for service in made:
        await service.lock()


async def reopen(
    service: ClientService, path: pathlib.Path, clock: Callable[[], float]
) -> ClientService:
    """Lock and unlock again (a restart of the client)."""
    await service.lock()
    return await ClientService.unlock(path, PASSPHRASE, clock=clock, options=FAST)


async def pair(inviter: ClientService, acceptor: ClientService, name: str = "inviter") -> tuple[
    ContactInfo, ContactInfo
]:
    """Run the invitation handshake in one-shot mode; returns (inviter's contact, acceptor's
    contact), both ACTIVE."""
    known = {c.id for c in await inviter.contacts()}
    invitation = await inviter.create_invitation()
    theirs = await acceptor.accept_invitation(invitation.uri, name)
    assert theirs.state is ContactState.PENDING
    await inviter.sync(5)  # the acceptance; sends the confirmation
    await acceptor.sync(5)  # the confirmation
    (ours,) = [c for c in await inviter.contacts() if c.id not in known]
    theirs = await acceptor.contact(name)
    assert ours.state is ContactState.ACTIVE
    assert theirs.state is ContactState.ACTIVE
    return ours, theirs


async def wait_for(
    stream: EventStream, predicate: Callable[[Event], bool], timeout: float = 10.0
) -> Event:
    """The first event on ``stream`` that satisfies ``predicate``."""
    async with asyncio.timeout(timeout):
        async for event in stream:
            if predicate(event):
                return event
    raise AssertionError("event stream ended")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds (for state no event announces, such as a relay's)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (polls state that has no event)
            await asyncio.sleep(0.05)


async def table_rows(service: ClientService) -> dict[str, int]:
    """How many rows each client table holds (to assert that a refusal stored nothing)."""

    def count() -> dict[str, int]:
        db = service._store._db
        names = ("contacts", "queues", "invitations", "messages", "outbox")
        return {n: int(db.execute(f"SELECT count(*) FROM {n}")[0][0]) for n in names}  # type: ignore[arg-type]  # noqa: S608 (fixed names)

    return await service._db(count)
