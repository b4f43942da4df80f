"""kill -9 of a relay process in the middle of a burst, with the SQLite store.

The guarantee under test: a SEND answered OK is delivered after restart, and a message whose
ACK was answered OK is never delivered again. Real processes, real WebSockets, 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from kith.client.relay import RelayClient, RelayError
from kith.crypto.signing import SigningKey
from tests.support import RelayProcess

pytestmark = pytest.mark.integration

BLOCK = 512
BURST = 3000


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") * (BLOCK // 4)


def number(body: bytes) -> int:
    n = int.from_bytes(body[:4], "big")
    assert body == numbered(n), "body corrupted"
    return n


async def _burst(
    url: str, sid: bytes, rid: bytes, key: SigningKey, kill_after: int, relay: RelayProcess
) -> tuple[set[int], set[int], set[int], list[int]]:
    sent_ok: set[int] = set()
    acked_ok: set[int] = set()
    ack_sent: set[int] = set()
    delivered: list[int] = []
    sender = await RelayClient.connect(url)
    recipient = await RelayClient.connect(url)
    await recipient.subscribe(rid, key)
    killed = asyncio.Event()

    async def send(i: int) -> None:
        with contextlib.suppress(RelayError):
            await sender.send(sid, numbered(i))
            sent_ok.add(i)
            if len(sent_ok) == kill_after and not killed.is_set():
                killed.set()
                relay.kill()

    async def receive() -> None:
        with contextlib.suppress(RelayError, TimeoutError):
            while True:
                m = await recipient.next_message(timeout=10)
                n = number(m.body)
                delivered.append(n)
                ack_sent.add(n)
                await recipient.ack(rid, m.msg_id)
                acked_ok.add(n)

    rx = asyncio.create_task(receive())
    # Pipelined: many SENDs in flight at once, so the kill lands between commit batches.
    await asyncio.gather(*(send(i) for i in range(BURST)))
    await asyncio.wait_for(rx, 30)
    for c in (sender, recipient):
        await c.close()
    assert killed.is_set(), "the relay was never killed: burst too small"
    return sent_ok, acked_ok, ack_sent, delivered


async def test_kill_9_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    args = ("--store", "sqlite", "--db", str(db), "--block-size", str(BLOCK),
            "--quota-messages", str(BURST + 10))
    relay = RelayProcess(*args)
    key = SigningKey.generate()
    setup = await RelayClient.connect(relay.url)
    rid, sid = await setup.create_queue(key)
    await setup.close()

    sent_ok, acked_ok, ack_sent, delivered_before = await _burst(
        relay.url, sid, rid, key, kill_after=BURST // 3, relay=relay
    )
    assert len(sent_ok) >= BURST // 3

    relay = RelayProcess(*args)
    try:
        after: list[int] = []
        async with await RelayClient.connect(relay.url) as recipient:
            await recipient.subscribe(rid, key)
            with contextlib.suppress(TimeoutError):
                while True:
                    m = await recipient.next_message(timeout=5)
                    after.append(number(m.body))
                    await recipient.ack(rid, m.msg_id)
    finally:
        relay.stop()

    # Every SEND the relay acknowledged is delivered after the restart, unless the recipient
    # had already sent its ACK (the relay may have committed that ACK and died before it could
    # answer, so such a message may rightly be gone).
    missing = sent_ok - ack_sent - set(after)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    # No message whose ACK was answered comes back.
    again = acked_ok & set(after)
    assert not again, f"{len(again)} acked messages delivered again"
    # Nothing is delivered twice after restart, and order is kept.
    assert len(after) == len(set(after))
    assert after == sorted(after)
    # Everything delivered was really sent (nothing invented, nothing corrupted).
    assert set(after) <= set(range(BURST))
    assert delivered_before == sorted(delivered_before)
