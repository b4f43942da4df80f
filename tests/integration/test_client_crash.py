"""kill -9 of a sending client and of the relay, mid-conversation, with real processes.

The sender runs in its own process (tests/integration/client_worker.py) and is killed with
SIGKILL while it writes and sends; then the relay process is killed while the restarted sender
is sending, and started again on the same port and database. The receiver runs here,
long-running. Afterwards the receiver holds exactly the messages the sender's vault holds,
each once, in the order they were written. 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sys

import pytest

from kith.client.service import ClientOptions, ClientService
from kith.client.transport import Backoff
from kith.vault.params import INSECURE_FAST_PARAMS_FOR_TESTS_ONLY
from tests.support import RelayProcess, free_port
from tests.unit.client.conftest import pair

pytestmark = pytest.mark.integration

PASSPHRASE = "a passphrase for tests only"  # noqa: S105 (a test profile's passphrase)
OPTIONS = ClientOptions(
    connect_timeout=1.0,
    backoff=Backoff(initial=0.05, maximum=0.5, jitter=0.1),
    settle=0.3,
    gap_grace=0.3,
)
ROOT = pathlib.Path(__file__).resolve().parents[2]


class Worker:
    """The sending client process; ``queued`` holds every index it reported as stored."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.queued: list[int] = []
        self.flushed = False

    @classmethod
    async def start(cls, vault: pathlib.Path, contact: str, first: int, count: int) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.client_worker",
            str(vault), contact, str(first), str(count),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        return cls(proc)

    async def until_queued(self, n: int, timeout: float = 60) -> None:
        """Read its output until it reported ``n`` stored messages (or flushed)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while len(self.queued) < n and not self.flushed:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError("the client process ended early")
                text = line.decode().strip()
                if text.startswith("queued "):
                    self.queued.append(int(text.split()[1]))
                elif text == "flushed":
                    self.flushed = True

    async def until_flushed(self, timeout: float = 60) -> None:
        await self.until_queued(10**9, timeout)
        assert self.flushed
        await self.proc.wait()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def test_sender_and_relay_killed_mid_conversation_deliver_exactly_once_in_order(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    db = tmp_path / "relay.db"
    relay = RelayProcess("--store", "sqlite", "--db", str(db), port=port)
    alice = bob = None
    workers: list[Worker] = []
    try:
        async def make(name: str) -> ClientService:
            return await ClientService.create(
                tmp_path / name, PASSPHRASE, params=INSECURE_FAST_PARAMS_FOR_TESTS_ONLY,
                relay_url=relay.url, allow_insecure_params_for_tests=True, options=OPTIONS,
            )

        alice, bob = await make("alice"), await make("bob")
        contact, _ = await pair(alice, bob, "alice")
        await alice.lock()
        await bob.start()

        # 1. The sender dies with SIGKILL in the middle of a run of sends.
        first = await Worker.start(tmp_path / "alice", contact.id, 0, 300)
        workers.append(first)
        await first.until_queued(40)
        await first.kill()

        # 2. Restarted, it sends more; the relay dies with SIGKILL meanwhile and comes back
        #    on the same port and database.
        second = await Worker.start(tmp_path / "alice", contact.id, 1000, 60)
        workers.append(second)
        await second.until_queued(20)
        relay.kill()
        await asyncio.sleep(0.5)
        relay = RelayProcess("--store", "sqlite", "--db", str(db), port=port)
        await second.until_flushed()

        # The truth is what the sender's vault holds (a message whose "queued" line never
        # got out before the kill may still have been stored, and then must arrive too).
        alice = await ClientService.unlock(tmp_path / "alice", PASSPHRASE, options=OPTIONS)
        written = [m.text for m in await alice.messages(contact.id, 10_000) if m.outgoing]
        for i in first.queued + second.queued:
            assert f"m{i}" in written
        assert len(written) == len(set(written))
        assert not first.flushed and len(first.queued) < 300  # it really died mid-run
        assert sum(t.startswith("m1") and len(t) == 5 for t in written) == 60

        async def received() -> list[str]:
            return [m.text for m in await bob.messages("alice", 10_000) if not m.outgoing]

        async with asyncio.timeout(60):
            while len(await received()) < len(written):  # noqa: ASYNC110 (polls the vault)
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a duplicate would show up now
        assert await received() == written
    finally:
        for w in workers:
            await w.kill()
        for service in (alice, bob):
            if service is not None:
                await service.lock()
        relay.stop()
