"""Tests that play the attacker against receipts and queue moves: a relay (or anyone on the
path) that flips, replays, reflects, misdirects, reorders and drops RECEIPT, MOVE and
MOVE_ACK blocks, and a peer (buggy or captured) that sends moves that make no sense. Every
refusal is a typed error and leaves the channel exactly as it was; every loss is recovered."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError, KithError
from kith.protocol import envelope as ev
from kith.protocol import pairwise as pw
from tests.unit.protocol.control_support import RELAY_C, RELAY_D, Relays, forged_control, recv
from tests.unit.protocol.pairwise_support import (
    NOW,
    Pair,
    body_of,
    fingerprint,
    handshake,
    make_inbox,
    rng,
    text,
)


def _refused(
    channel: pw.Channel, block: bytes, error: type[KithError] = KithError, seed: int = 0
) -> None:
    before = fingerprint(channel)
    with pytest.raises(error):
        recv(channel, block, rng(seed))
    assert fingerprint(channel) == before


def _still_talking(pair: Pair, tag: bytes) -> None:
    r = rng(len(tag) + 100)
    assert body_of(recv(pair.bob, text(pair.alice, b"a:" + tag, r), r)) == b"a:" + tag
    assert body_of(recv(pair.alice, text(pair.bob, b"b:" + tag, r), r)) == b"b:" + tag


# --------------------------------------------------------------------------- tampering


def _control_block(kind: str) -> tuple[pw.Channel, bytes, type[pw.Event]]:
    """A genuine block of each new type on 1024-byte relays, and the channel it is for."""
    pair = handshake(20, block_a=1024, block_b=1024)
    r = rng(21)
    if kind == "receipt":
        return (
            pair.alice,
            pair.bob.send_receipt((b"x" * 16,), now_ms=NOW, rng=r).block,
            pw.Delivered,
        )
    move = pair.alice.move_inbox(make_inbox(r, RELAY_C, 1024), now_ms=NOW, rng=r)
    if kind == "move":
        return pair.bob, move.block, pw.PeerMoved
    moved = recv(pair.bob, move.block, r)
    assert isinstance(moved, pw.PeerMoved)
    return pair.alice, moved.send.block, pw.InboxMoved


@pytest.mark.parametrize("kind", ["receipt", "move", "move-ack"])
def test_every_flipped_byte_of_a_control_block_is_refused_and_changes_nothing(kind: str) -> None:
    receiver, block, expected = _control_block(kind)
    before = fingerprint(receiver)
    r = rng(22)
    for i in range(len(block)):
        for mask in (0x01, 0x80):
            flipped = block[:i] + bytes([block[i] ^ mask]) + block[i + 1 :]
            with pytest.raises(KithError):
                receiver.receive(flipped, now_ms=NOW, rng=r)
    assert fingerprint(receiver) == before
    assert isinstance(recv(receiver, block, r), expected)


# --------------------------------------------------------------------------- replay, reflection


def test_control_blocks_cannot_be_replayed_reflected_or_misdirected() -> None:
    pair = handshake(23)
    other = handshake(24)
    r = rng(25)
    receipt = pair.bob.send_receipt((b"x" * 16,), now_ms=NOW, rng=r).block
    move = pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block
    # Reflected to their own sender, or carried into another channel, before delivery.
    _refused(pair.bob, receipt, DecryptError)
    _refused(pair.alice, move, DecryptError)
    _refused(other.alice, receipt, DecryptError)
    _refused(other.bob, move, DecryptError)
    assert isinstance(recv(pair.alice, receipt, r), pw.Delivered)
    moved = recv(pair.bob, move, r)
    assert isinstance(moved, pw.PeerMoved)
    ack = moved.send.block
    _refused(pair.bob, ack, DecryptError)
    _refused(other.alice, ack, DecryptError)
    assert isinstance(recv(pair.alice, ack, r), pw.InboxMoved)
    # Replays of all three, after delivery: the window refuses them (a replayed MOVE would
    # otherwise be answered again, a replayed MOVE_ACK taken for a repeat).
    _refused(pair.alice, receipt, DecryptError)
    _refused(pair.bob, move, DecryptError)
    _refused(pair.alice, ack, DecryptError)
    _still_talking(pair, b"replay")


def test_a_replayed_move_is_refused_even_when_olm_would_decrypt_it() -> None:
    """A session rolled back (crash before saving, old backup) still decrypts an old MOVE;
    the sequence window refuses it, so it is not answered a second time."""
    pair = handshake(26)
    r = rng(27)
    old_session = pair.bob._session.copy()
    move = pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block
    assert isinstance(recv(pair.bob, move, r), pw.PeerMoved)
    pair.bob._session = old_session
    _refused(pair.bob, move, DecryptError)


# --------------------------------------------------------------------------- loss and order


def test_a_lost_move_is_noticed_and_sent_again() -> None:
    pair = handshake(28)
    alice, bob = pair.alice, pair.bob
    r = rng(29)
    lost = alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    assert body_of(recv(bob, text(alice, b"after the move", r), r)) == b"after the move"
    assert bob.missing() == (lost.header.seq,)
    asked = recv(alice, bob.request_resend(now_ms=NOW, rng=r).block, r)
    assert asked == pw.ResendRequested((lost.header.seq,))
    # The client sees the MOVE's seq requested and a move pending: resend_move.
    again = alice.resend_move(now_ms=NOW, rng=r)
    assert again.header.seq != lost.header.seq
    moved = recv(bob, again.block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    _refused(bob, lost.block, DecryptError)  # given up on when the resend was requested
    _still_talking(pair, b"lost move")


def test_a_lost_acknowledgement_is_recovered_by_resending_the_move() -> None:
    """The MOVE_ACK is dropped. Bob already sends to the new queue; Alice reads it there but
    has not moved. She sends the MOVE again; Bob answers for the same queue and key."""
    pair = handshake(30)
    alice, bob = pair.alice, pair.bob
    relays, r = Relays(), rng(31)
    q1, q2 = alice.inbox, make_inbox(r, RELAY_C)
    moved = recv(bob, alice.move_inbox(q2, now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    seed = bob.outbox.auth_seed
    relays.send(bob.send(b"on the new queue", now_ms=NOW, rng=r))  # the ACK is lost
    assert _bodies_on(alice, relays.drain(q2), r) == [b"on the new queue"]
    assert alice.pending_inbox == q2 and alice.missing() == (moved.send.header.seq,)
    again = recv(bob, alice.resend_move(now_ms=NOW, rng=r).block, r)
    assert isinstance(again, pw.PeerMoved)
    assert again.send.queue == moved.send.queue and bob.outbox.auth_seed == seed
    done = recv(alice, again.send.block, r)
    key = CRYPTO.signing_public_key(seed)
    assert done == pw.InboxMoved(pw.SecureInbox(q2.recipient_id, key), q1)
    assert alice.inbox == q2 and alice.inbox_sender_key == key
    _still_talking(pair, b"lost ack")


def _bodies_on(channel: pw.Channel, blocks: list[bytes], r: pw.RandomBytes) -> list[bytes]:
    return [body_of(recv(channel, block, r)) for block in blocks]


def test_a_late_second_acknowledgement_is_ignored() -> None:
    """Alice resends the MOVE before the first answer arrives: both are answered, the second
    answer changes nothing (but is accepted once, so it leaves no gap)."""
    pair = handshake(32)
    alice, bob = pair.alice, pair.bob
    r = rng(33)
    first = alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    second = alice.resend_move(now_ms=NOW, rng=r)
    ack1, ack2 = recv(bob, first.block, r), recv(bob, second.block, r)
    assert isinstance(ack1, pw.PeerMoved) and isinstance(ack2, pw.PeerMoved)
    assert isinstance(recv(alice, ack1.send.block, r), pw.InboxMoved)
    after = fingerprint(alice)
    ignored = recv(alice, ack2.send.block, r)
    assert isinstance(ignored, pw.Ignored) and ignored.header == ack2.send.header
    assert alice.missing() == ()
    assert fingerprint(alice) != after  # the window moved: a replay is refused below
    _refused(alice, ack2.send.block, DecryptError)
    # Delivered the other way round, the second is the one that completes the move.
    pair = handshake(34)
    first = pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    second = pair.alice.resend_move(now_ms=NOW, rng=r)
    ack1, ack2 = recv(pair.bob, first.block, r), recv(pair.bob, second.block, r)
    assert isinstance(ack1, pw.PeerMoved) and isinstance(ack2, pw.PeerMoved)
    assert isinstance(recv(pair.alice, ack2.send.block, r), pw.InboxMoved)
    assert isinstance(recv(pair.alice, ack1.send.block, r), pw.Ignored)


def test_a_relay_replaying_an_old_move_late_cannot_move_the_peer_back() -> None:
    """A resent MOVE for Q2 is held back by the relay until after the move to Q3: the
    generation says it is stale, so Bob stays on Q3."""
    pair = handshake(35)
    alice, bob = pair.alice, pair.bob
    r = rng(36)
    q2, q3 = make_inbox(r, RELAY_C), make_inbox(r, RELAY_D)
    move2 = alice.move_inbox(q2, now_ms=NOW, rng=r)
    held_back = alice.resend_move(now_ms=NOW, rng=r)
    moved = recv(bob, move2.block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    alice.finish_move()
    moved3 = recv(bob, alice.move_inbox(q3, now_ms=NOW, rng=r).block, r)
    assert isinstance(moved3, pw.PeerMoved) and bob.outbox.sender_id == q3.sender_id
    stale = recv(bob, held_back.block, r)
    assert isinstance(stale, pw.Ignored)
    assert bob.outbox == moved3.send.queue  # still Q3, same key
    assert isinstance(recv(alice, moved3.send.block, r), pw.InboxMoved)
    assert alice.inbox == q3
    # A repeated acknowledgement of the older move, arriving late, is ignored too.
    assert isinstance(recv(alice, forged_ack(bob, 1, q2.sender_id, r), r), pw.Ignored)
    _still_talking(pair, b"stale")


def forged_ack(sender: pw.Channel, generation: int, sender_id: bytes, r: pw.RandomBytes) -> bytes:
    payload = pw.MoveAckPayload(generation, sender_id, CRYPTO.signing_public_key(r(32)))
    return forged_control(sender, ev.MessageType.MOVE_ACK, payload.to_bytes(), r)


def forged_move(
    sender: pw.Channel, generation: int, queue: pw.InboxQueue | pw.PeerQueue, r: pw.RandomBytes
) -> bytes:
    payload = pw.MovePayload(generation, queue.relay, queue.sender_id, queue.block_size)
    return forged_control(sender, ev.MessageType.MOVE, payload.to_bytes(), r)


# ------------------------------------------------------------ moves that make no sense

Scenario = Callable[[Pair, pw.RandomBytes], tuple[pw.Channel, bytes]]


def _skip_a_generation(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    return pair.bob, forged_move(pair.alice, 2, make_inbox(r, RELAY_C), r)


def _second_concurrent_move(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    """Move 1 applied, then move 2 and 3 sent without waiting: 3 arrives first."""
    moved = recv(
        pair.bob, pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r
    )
    assert isinstance(moved, pw.PeerMoved)
    return pair.bob, forged_move(pair.alice, 3, make_inbox(r, RELAY_D), r)


def _repeat_naming_another_queue(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    moved = recv(
        pair.bob, pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r
    )
    assert isinstance(moved, pw.PeerMoved)
    return pair.bob, forged_move(pair.alice, 1, make_inbox(r, RELAY_C), r)


def _repeat_with_another_block_size(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    q2 = make_inbox(r, RELAY_C)
    moved = recv(pair.bob, pair.alice.move_inbox(q2, now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    other = pw.PeerQueue(q2.relay, q2.sender_id, 2048, bytes(32))
    return pair.bob, forged_move(pair.alice, 1, other, r)


def _move_to_the_queue_in_use(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    return pair.bob, forged_move(pair.alice, 1, pair.bob.outbox, r)


def _ack_without_a_move(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    return pair.alice, forged_ack(pair.bob, 1, pair.alice.inbox.sender_id, r)


def _ack_for_another_queue(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    return pair.alice, forged_ack(pair.bob, 1, r(16), r)


def _ack_for_a_move_never_made(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    pending = pair.alice.pending_inbox
    assert pending is not None
    return pair.alice, forged_ack(pair.bob, 2, pending.sender_id, r)


def _repeat_ack_with_another_key(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
    moved = recv(
        pair.bob, pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r
    )
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(pair.alice, moved.send.block, r), pw.InboxMoved)
    return pair.alice, forged_ack(pair.bob, 1, pair.alice.inbox.sender_id, r)


def _move_ack_to_the_unconfirmed_acceptor(
    pair: Pair, r: pw.RandomBytes
) -> tuple[pw.Channel, bytes]:
    return pair.bob, forged_ack(pair.alice, 1, pair.bob.inbox.sender_id, r)


def _malformed(body: bytes, msg_type: int) -> Scenario:
    def scenario(pair: Pair, r: pw.RandomBytes) -> tuple[pw.Channel, bytes]:
        if msg_type == ev.MessageType.MOVE:
            return pair.bob, forged_control(pair.alice, msg_type, body, r)
        pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
        return pair.alice, forged_control(pair.bob, msg_type, body, r)

    return scenario


_GOOD_MOVE = pw.MovePayload(1, RELAY_C, b"\x22" * 16, 4096).to_bytes()
_GOOD_ACK = pw.MoveAckPayload(1, b"\x22" * 16, b"\x77" * 32).to_bytes()

SCENARIOS: dict[str, Scenario] = {
    "skipped-generation": _skip_a_generation,
    "second-concurrent-move": _second_concurrent_move,
    "repeat-naming-another-queue": _repeat_naming_another_queue,
    "repeat-with-another-block-size": _repeat_with_another_block_size,
    "move-to-the-queue-in-use": _move_to_the_queue_in_use,
    "ack-without-a-move": _ack_without_a_move,
    "ack-for-another-queue": _ack_for_another_queue,
    "ack-for-a-move-never-made": _ack_for_a_move_never_made,
    "repeat-ack-with-another-key": _repeat_ack_with_another_key,
    "move-ack-to-unconfirmed-acceptor": _move_ack_to_the_unconfirmed_acceptor,
    "move-generation-0": _malformed(b"\x00" * 4 + _GOOD_MOVE[4:], ev.MessageType.MOVE),
    "move-block-too-small": _malformed(
        _GOOD_MOVE[:-4] + (512).to_bytes(4, "big"), ev.MessageType.MOVE
    ),
    "move-relay-with-space": _malformed(
        _GOOD_MOVE[:4] + b"\x03a b" + _GOOD_MOVE[24:], ev.MessageType.MOVE
    ),
    "move-trailing-byte": _malformed(_GOOD_MOVE + b"\x00", ev.MessageType.MOVE),
    "move-truncated": _malformed(_GOOD_MOVE[:-1], ev.MessageType.MOVE),
    "ack-generation-0": _malformed(b"\x00" * 4 + _GOOD_ACK[4:], ev.MessageType.MOVE_ACK),
    "ack-trailing-byte": _malformed(_GOOD_ACK + b"\x00", ev.MessageType.MOVE_ACK),
    "ack-truncated": _malformed(_GOOD_ACK[:-1], ev.MessageType.MOVE_ACK),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_moves_that_make_no_sense_are_refused_and_change_nothing(name: str) -> None:
    pair = _unconfirmed()[0] if name == "move-ack-to-unconfirmed-acceptor" else handshake(40)
    r = rng(41)
    receiver, block = SCENARIOS[name](pair, r)
    _refused(receiver, block, pw.HandshakeError)
    if pair.bob.confirmed:
        _still_talking(pair, name.encode())


def _unconfirmed() -> tuple[Pair, bytes]:
    """Both channels, and the inviter's confirmation not yet delivered to the acceptor."""
    r = rng(42)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    bob, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r, RELAY_D), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    alice, effects = pending.receive(accept.block, now_ms=NOW, rng=r)
    confirm = effects[1]
    assert isinstance(confirm, pw.SendBlock)
    unset = pw.Confirmed(pw.SecureInbox(bob.inbox.recipient_id, bytes(32)))  # not yet
    return Pair(
        pending, pending.invitation, alice, bob, accept.block, effects, unset
    ), confirm.block


def test_a_move_before_the_confirmation_is_refused_then_accepted_after_it() -> None:
    """The MOVE overtakes the confirmation: refused (nothing changed, so the same block is
    still good), and accepted once the handshake completed."""
    pair, confirm = _unconfirmed()
    r = rng(43)
    move = pair.alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    _refused(pair.bob, move.block, pw.HandshakeError)
    assert isinstance(recv(pair.bob, confirm, r), pw.Confirmed)
    moved = recv(pair.bob, move.block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(pair.alice, moved.send.block, r), pw.InboxMoved)
    _still_talking(pair, b"overtaken")
