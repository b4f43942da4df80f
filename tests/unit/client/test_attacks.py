"""A captured contact and a hostile relay attack a conversation; the service holds."""

from __future__ import annotations

import pathlib

from kith.client.model import MessageState
from kith.client.service import ClientService
from kith.client.store import OutboxKind, QueueKind
from kith.protocol import relay as rp
from kith.protocol.envelope import MessageType
from kith.protocol.pairwise import encode_resend_request
from kith.relay.core import RelayConfig
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.sqlite import SQLiteStore

from .conftest import Clock, MakeProfile, Relay, pair


async def forged_resend_request(profile: ClientService, cid: str, seqs: tuple[int, ...]) -> None:
    """What a captor running a seized profile with one changed line can send: a resend
    request naming any numbers it likes."""
    async with profile._lock(cid):
        channel = await profile._channel(cid)
        block = channel._seal(
            MessageType.RESEND_REQUEST, 0, encode_resend_request(seqs),
            profile._now_ms(), profile._rng,
        )
        await profile._save_with_outbox(cid, channel, [(block, OutboxKind.CONTROL, None)])


async def test_a_captured_contact_cannot_pull_back_delivered_history(
    make_profile: MakeProfile, clock: Clock
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    bob_at_alice, alice_at_bob = await pair(alice, bob, "alice")
    for text in ("secret one", "secret two", "secret three"):
        await alice.send(bob_at_alice.id, text)
    await alice.sync(5)
    await bob.sync(5)  # stored and receipted
    await alice.sync(5)
    assert {m.state for m in await alice.messages(bob_at_alice.id)} == {MessageState.DELIVERED}
    # Bob's short timer runs out: the messages are gone from the (later seized) phone.
    await bob.set_disappearing("alice", 10)
    clock.advance(11)
    await bob.sweep()
    assert await bob.messages("alice") == []

    await forged_resend_request(bob, alice_at_bob.id, (1, 2, 3, 1, 1))
    await bob.sync(5)
    await alice.sync(5)
    await bob.sync(5)
    assert await bob.messages("alice") == []  # nothing came back
    assert alice.stats.get("resent", 0) == 0
    assert alice.stats["resend_unavailable"] == 3  # each number answered (with nothing) once


async def test_a_resend_that_no_longer_fits_does_not_jam_the_inbox(
    make_profile: MakeProfile, relay: Relay, tmp_path: pathlib.Path
) -> None:
    small = RelayServer(
        SQLiteStore(tmp_path / "small.db"),
        ServerConfig(port=0, relay=RelayConfig(block_size=1024)),
    )
    await small.start()
    try:
        alice = await make_profile("alice")
        bob = await make_profile("bob")
        bob_at_alice, alice_at_bob = await pair(alice, bob, "alice")
        await alice.send(bob_at_alice.id, "x" * 2000)
        await alice.sync(5)
        # Bob moves his inbox to a relay with 1024-byte blocks before the message is confirmed.
        await bob.rotate("alice", f"ws://127.0.0.1:{small.port}")
        for profile in (bob, alice, bob, alice):
            await profile.sync(5)
        await forged_resend_request(bob, alice_at_bob.id, (1,))
        await bob.sync(5)
        await alice.sync(5)
        await alice.sync(5)
        assert alice.stats["resend_unavailable"] >= 1
        assert alice.stats.get("background_errors", 0) == 0
        assert relay.count("messages") == 0  # the request was handled and acknowledged
    finally:
        await small.stop()


async def test_a_message_held_back_by_the_relay_is_marked_late(
    make_profile: MakeProfile,
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    bob_at_alice, alice_at_bob = await pair(alice, bob, "alice")
    await alice.send(bob_at_alice.id, "do NOT come tonight, police")
    await alice.send(bob_at_alice.id, "come to the usual place at 9")
    rows = await alice._db(alice._store.outbox)
    blocks = [r.block for r in rows if r.contact_id == bob_at_alice.id]
    assert len(blocks) == 2
    inbox = next(
        q for q in bob._queues.values()
        if q.kind is QueueKind.CONTACT and q.owner == alice_at_bob.id
    )
    # The relay delivers them in reverse order.
    for i, block in enumerate(reversed(blocks)):
        await bob._on_message(inbox.relay, rp.Msg(inbox.recipient_id, bytes([i]) * 16, 0, block))
    shown = [(m.text, m.late) for m in await bob.messages("alice")]
    assert shown == [
        ("come to the usual place at 9", False),
        ("do NOT come tonight, police", True),
    ]
