"""Queue moves: a contact's inbox moves to another queue (and relay) inside the channel, with
no message lost, none accepted twice, order kept, and every step surviving a save and
restore. Relays are simulated as FIFO queues (see control_support.Relays)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError, LocalProtocolError
from kith.protocol import envelope as ev
from kith.protocol import pairwise as pw
from kith.protocol.safety import SafetyNumber
from tests.unit.protocol.control_support import RELAY_C, RELAY_D, Relays, recv
from tests.unit.protocol.pairwise_support import (
    NOW,
    PICKLE_KEY,
    Pair,
    body_of,
    fingerprint,
    handshake,
    make_inbox,
    rng,
    text,
)

DATA = Path(__file__).parent / "data"
RELAY_A_ALT = "ws://127.0.0.1:7005"


def _restore(channel: pw.Channel) -> pw.Channel:
    restored = pw.Channel.from_bytes(channel.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert fingerprint(restored) == fingerprint(channel)
    return restored


def _move_state(channel: pw.Channel) -> tuple[pw.InboxQueue | None, pw.InboxQueue | None]:
    return channel.pending_inbox, channel.retiring_inbox


def _bodies(channel: pw.Channel, blocks: list[bytes], r: pw.RandomBytes) -> list[bytes]:
    return [body_of(recv(channel, block, r)) for block in blocks]


def test_a_move_loses_nothing_and_keeps_order() -> None:
    """Bob has messages queued on Alice's old inbox when she moves; he keeps sending until he
    hears of the move, then only to the new queue. Alice reads the acknowledgement, drains
    the old queue, then the new one: every message exactly once, in order."""
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    relays, r = Relays(), rng(1)
    q1 = alice.inbox
    old_key = alice.inbox_sender_key
    for i in range(5):
        relays.send(bob.send(b"%d" % i, now_ms=NOW, rng=r))
    q2 = make_inbox(r, RELAY_C)
    move = alice.move_inbox(q2, now_ms=NOW, rng=r)
    assert move.header.msg_type == ev.MessageType.MOVE and move.queue == alice.outbox
    assert alice.pending_inbox == q2 and alice.inbox == q1 and alice.retiring_inbox is None
    relays.send(move)
    relays.send(bob.send(b"5", now_ms=NOW, rng=r))  # before Bob reads the MOVE
    (move_block,) = relays.drain(bob.inbox)
    moved = recv(bob, move_block, r)
    assert isinstance(moved, pw.PeerMoved)
    ack = moved.send
    assert ack.header.msg_type == ev.MessageType.MOVE_ACK
    assert ack.queue == bob.outbox
    assert (ack.queue.relay, ack.queue.sender_id, ack.queue.block_size) == (
        RELAY_C,
        q2.sender_id,
        q2.block_size,
    )
    relays.send(ack)
    for i in range(6, 9):
        out = bob.send(b"%d" % i, now_ms=NOW, rng=r)
        assert out.queue == ack.queue  # everything after the move goes to the new queue
        relays.send(out)
    assert relays.held(q1) == 6 and relays.held(q2) == 4

    # Alice: the acknowledgement is first on the new queue.
    on_q2 = relays.drain(q2)
    done = recv(alice, on_q2[0], r)
    new_key = CRYPTO.signing_public_key(bob.outbox.auth_seed)
    assert done == pw.InboxMoved(pw.SecureInbox(q2.recipient_id, new_key), q1)
    assert alice.inbox == q2 and alice.inbox_sender_key == new_key != old_key
    assert _move_state(alice) == (None, q1)
    # Then the old queue to its end, then the rest of the new one.
    got = _bodies(alice, relays.drain(q1), r) + _bodies(alice, on_q2[1:], r)
    assert got == [b"%d" % i for i in range(9)]
    assert alice.missing() == () and bob.missing() == ()
    alice.finish_move()
    assert alice.retiring_inbox is None
    # The other direction never moved.
    assert body_of(recv(bob, text(alice, b"hi", r), r)) == b"hi"


def test_sequence_numbers_and_window_run_on_across_the_move() -> None:
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    r = rng(2)
    seqs_before = (alice.next_seq, bob.next_seq)
    move = alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    moved = recv(bob, move.block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert move.header.seq == seqs_before[0] and moved.send.header.seq == seqs_before[1]
    after = bob.send(b"x", now_ms=NOW, rng=r)
    assert after.header.seq == seqs_before[1] + 1
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    body_of(recv(alice, after.block, r))
    with pytest.raises(DecryptError):  # a copy on any queue is a replay
        recv(alice, after.block, r)


def test_a_late_block_from_the_retired_queue_is_still_accepted_once() -> None:
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    r = rng(3)
    late = bob.send(b"slow relay", now_ms=NOW, rng=r)
    moved = recv(bob, alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    assert body_of(recv(alice, text(bob, b"on q2", r), r)) == b"on q2"
    alice.finish_move()
    assert body_of(recv(alice, late.block, r)) == b"slow relay"
    with pytest.raises(DecryptError):
        recv(alice, late.block, r)


def test_a_move_to_another_block_size() -> None:
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    r = rng(4)
    bob.padding = ev.Padding.for_block(4096, (256,))
    moved = recv(bob, alice.move_inbox(make_inbox(r, RELAY_C, 1024), now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert len(moved.send.block) == 1024
    assert bob.outbox.block_size == 1024
    assert bob.padding == ev.Padding.for_block(1024)  # reset to the new block's default
    assert bob.max_body == ev.body_capacity(1024)
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    big = b"y" * bob.max_body
    out = bob.send(big, now_ms=NOW, rng=r)
    assert len(out.block) == 1024 and body_of(recv(alice, out.block, r)) == big


def test_a_move_within_the_same_relay() -> None:
    pair = handshake()
    r = rng(5)
    q2 = make_inbox(r, pair.alice.inbox.relay)
    moved = recv(pair.bob, pair.alice.move_inbox(q2, now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved) and moved.send.queue.sender_id == q2.sender_id
    assert isinstance(recv(pair.alice, moved.send.block, r), pw.InboxMoved)


def test_a_move_changes_no_key() -> None:
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    r = rng(6)
    keys = (alice.our_keys, alice.their_keys, bob.our_keys, bob.their_keys)
    number = SafetyNumber.compute(alice.our_keys, alice.their_keys, CRYPTO).digits
    moved = recv(bob, alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    recv(alice, moved.send.block, r)
    assert (alice.our_keys, alice.their_keys, bob.our_keys, bob.their_keys) == keys
    assert SafetyNumber.compute(alice.our_keys, alice.their_keys, CRYPTO).digits == number


def test_moves_repeat_and_both_sides_may_move_at_once() -> None:
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    r = rng(7)
    for round_ in range(3):
        qa = make_inbox(r, RELAY_C if round_ % 2 == 0 else RELAY_A_ALT)
        qb = make_inbox(r, RELAY_D)
        move_a = alice.move_inbox(qa, now_ms=NOW, rng=r)
        move_b = bob.move_inbox(qb, now_ms=NOW, rng=r)  # the MOVEs cross
        moved_b = recv(bob, move_a.block, r)
        moved_a = recv(alice, move_b.block, r)
        assert isinstance(moved_a, pw.PeerMoved) and isinstance(moved_b, pw.PeerMoved)
        assert moved_a.send.queue.sender_id == qb.sender_id
        assert moved_b.send.queue.sender_id == qa.sender_id
        done_a = recv(alice, moved_b.send.block, r)
        done_b = recv(bob, moved_a.send.block, r)
        assert isinstance(done_a, pw.InboxMoved) and isinstance(done_b, pw.InboxMoved)
        assert alice.inbox == qa and bob.inbox == qb
        assert alice.outbox.sender_id == qb.sender_id and bob.outbox.sender_id == qa.sender_id
        alice.finish_move()
        bob.finish_move()
        assert body_of(recv(bob, text(alice, b"a%d" % round_, r), r)) == b"a%d" % round_
        assert body_of(recv(alice, text(bob, b"b%d" % round_, r), r)) == b"b%d" % round_


# --------------------------------------------------------------------------- persistence


def test_state_round_trips_at_every_step_of_a_move() -> None:
    pair = handshake()
    r = rng(8)
    q1 = pair.alice.inbox
    q2 = make_inbox(r, RELAY_C, 2048)
    move = pair.alice.move_inbox(q2, now_ms=NOW, rng=r)
    alice, bob = _restore(pair.alice), _restore(pair.bob)
    assert alice.pending_inbox == q2 and alice.retiring_inbox is None and alice.inbox == q1
    # A resend from the restored state is the same move.
    again = alice.resend_move(now_ms=NOW, rng=r)
    moved = recv(bob, move.block, r)
    assert isinstance(moved, pw.PeerMoved)
    bob = _restore(bob)
    assert bob.outbox == moved.send.queue
    repeat = recv(bob, again.block, r)  # a restored Bob answers with the same queue and key
    assert isinstance(repeat, pw.PeerMoved) and repeat.send.queue == moved.send.queue
    done = recv(alice, moved.send.block, r)
    assert isinstance(done, pw.InboxMoved)
    alice = _restore(alice)
    assert alice.inbox == q2 and alice.retiring_inbox == q1 and alice.pending_inbox is None
    assert alice.inbox_sender_key == done.secure.sender_key
    with pytest.raises(LocalProtocolError):  # still retiring, after a restart too
        alice.move_inbox(make_inbox(r, RELAY_D), now_ms=NOW, rng=r)
    assert isinstance(recv(alice, repeat.send.block, r), pw.Ignored)
    alice.finish_move()
    alice = _restore(alice)
    assert alice.retiring_inbox is None
    assert body_of(recv(alice, text(bob, b"x", r), r)) == b"x"
    assert body_of(recv(bob, text(alice, b"y", r), r)) == b"y"
    # The generations survive too: the next move is number 2 on both sides.
    move2 = alice.move_inbox(make_inbox(r, RELAY_D), now_ms=NOW, rng=r)
    assert isinstance(recv(_restore(bob), move2.block, r), pw.PeerMoved)


def test_version_1_states_load_and_carry_on() -> None:
    """Channels saved by the code before queue moves existed (state version 1, written by
    the channel code of commit c43bdd6 with handshake(seed=40) and kept in data/) load, read a
    message in flight across the upgrade, talk, move, and are saved in the current version."""
    alice = pw.Channel.from_bytes(
        (DATA / "channel_v1_inviter.bin").read_bytes(), PICKLE_KEY, CRYPTO
    )
    bob = pw.Channel.from_bytes((DATA / "channel_v1_acceptor.bin").read_bytes(), PICKLE_KEY, CRYPTO)
    r = rng(9)
    assert alice.confirmed and bob.confirmed
    assert alice.pending_inbox is None and alice.retiring_inbox is None
    assert (alice.next_seq, bob.next_seq) == (3, 2)
    in_flight = (DATA / "channel_v1_in_flight_block.bin").read_bytes()
    assert body_of(recv(bob, in_flight, r)) == b"in flight across the upgrade"
    assert body_of(recv(alice, text(bob, b"after the upgrade", r), r)) == b"after the upgrade"
    moved = recv(bob, alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    assert fingerprint(alice)[0] == pw.CHANNEL_STATE_VERSION == 3
    assert fingerprint(_restore(alice)) == fingerprint(alice)


def test_corrupt_move_state_is_refused() -> None:
    """Only a broken writer produces these; they must fail as StateError, not load."""
    v1 = CRYPTO.open(PICKLE_KEY, pw._CHANNEL_LABEL, (DATA / "channel_v1_inviter.bin").read_bytes())
    assert v1[0] == 1
    pair = handshake()
    v2 = fingerprint(pair.alice)
    bad = [
        v1[:1] + bytes([v1[1] | 8]) + v1[2:],  # version 1 knows no moves
        v1[:1] + bytes([v1[1] | 16]) + v1[2:],
        v2[:1] + bytes([v2[1] | 32]) + v2[2:],  # unknown role bit
        v2[:1] + bytes([v2[1] | 8]) + v2[2:],  # "moving" with generation 0 and no queue
        b"\x04" + v2[1:],  # a version from the future
    ]
    for inner in bad:
        blob = CRYPTO.seal(PICKLE_KEY, pw._CHANNEL_LABEL, inner)
        with pytest.raises(pw.StateError):
            pw.Channel.from_bytes(blob, PICKLE_KEY, CRYPTO)


# --------------------------------------------------------------------------- local misuse


def _moving(seed: int = 10) -> tuple[Pair, pw.InboxQueue, pw.SendBlock]:
    pair = handshake(seed)
    r = rng(seed + 1000)  # not the handshake's stream: the queue must be new
    q2 = make_inbox(r, RELAY_C)
    return pair, q2, pair.alice.move_inbox(q2, now_ms=NOW, rng=r)


def test_one_move_at_a_time_and_only_to_a_new_queue() -> None:
    pair, _q2, move = _moving()
    alice, r = pair.alice, rng(11)
    before = fingerprint(alice)
    with pytest.raises(LocalProtocolError, match="waiting"):
        alice.move_inbox(make_inbox(r, RELAY_D), now_ms=NOW, rng=r)
    with pytest.raises(LocalProtocolError):
        alice.finish_move()  # nothing retired yet
    with pytest.raises(TypeError):
        alice.move_inbox(pair.bob.outbox, now_ms=NOW, rng=r)  # type: ignore[arg-type]
    assert fingerprint(alice) == before
    moved = recv(pair.bob, move.block, r)
    assert isinstance(moved, pw.PeerMoved)
    recv(alice, moved.send.block, r)
    with pytest.raises(LocalProtocolError, match="finish_move"):
        alice.move_inbox(make_inbox(r, RELAY_D), now_ms=NOW, rng=r)
    with pytest.raises(LocalProtocolError):
        alice.resend_move(now_ms=NOW, rng=r)  # nothing pending any more
    alice.finish_move()
    with pytest.raises(LocalProtocolError):
        alice.finish_move()
    current = alice.inbox
    before = fingerprint(alice)
    for same in (
        current,
        pw.InboxQueue(RELAY_D, current.recipient_id, r(16), 4096, r(32)),
        pw.InboxQueue(RELAY_D, r(16), current.sender_id, 4096, r(32)),
    ):
        with pytest.raises(LocalProtocolError, match="new queue"):
            alice.move_inbox(same, now_ms=NOW, rng=r)
    assert fingerprint(alice) == before


def test_an_unconfirmed_acceptor_cannot_move() -> None:
    r = rng(12)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    bob, _accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    before = fingerprint(bob)
    with pytest.raises(LocalProtocolError, match="confirmed"):
        bob.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    assert fingerprint(bob) == before


def test_receiving_a_move_without_a_clock_and_rng_changes_nothing() -> None:
    pair, _q2, move = _moving(13)
    before = fingerprint(pair.bob)
    with pytest.raises(LocalProtocolError, match="rng"):
        pair.bob.receive(move.block)
    assert fingerprint(pair.bob) == before
    assert isinstance(recv(pair.bob, move.block, rng(13)), pw.PeerMoved)


def test_a_block_the_old_queue_can_no_longer_take_is_resent_to_the_new_one() -> None:
    """Bob's block for Q1 was never stored (R1 down, then Q1 deleted): his client sends the
    content again with the original id; it goes to Q2 and Alice gives the old number up."""
    pair = handshake(14)
    alice, bob = pair.alice, pair.bob
    r = rng(14)
    undeliverable = bob.send(b"stuck", now_ms=NOW, rng=r)
    q1 = alice.inbox
    assert undeliverable.queue.sender_id == q1.sender_id
    moved = recv(bob, alice.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(alice, moved.send.block, r), pw.InboxMoved)
    alice.finish_move()
    again = bob.send(b"stuck", now_ms=NOW, rng=r, msg_id=undeliverable.header.msg_id)
    assert again.queue == moved.send.queue
    got = recv(alice, again.block, r)
    assert isinstance(got, pw.Received) and got.header.msg_id == undeliverable.header.msg_id
    assert alice.missing() == (undeliverable.header.seq,)
    asked = recv(bob, alice.request_resend(now_ms=NOW, rng=r).block, r)
    assert asked == pw.ResendRequested((undeliverable.header.seq,))
    assert alice.missing() == ()
    with pytest.raises(DecryptError):  # should the original still turn up: once only
        recv(alice, undeliverable.block, r)
