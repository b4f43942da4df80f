"""A handshake confirmation that a hostile relay drops again and again: the acceptor asks for
each lost copy by number, the inviter recognises every number that carried a confirmation and
answers with a new one, and the acceptor ends confirmed. Repeats are harmless (``Ignored``),
a confirmation that would re-key the inbox is refused, and the number of the last resent
confirmation survives a save (state version 3; versions 1 and 2 still load)."""

from __future__ import annotations

import pytest

from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError
from kith.protocol import pairwise as pw
from kith.protocol.envelope import MessageType
from tests.unit.protocol.control_support import RELAY_C, forged_control, recv
from tests.unit.protocol.pairwise_support import (
    NOW,
    PICKLE_KEY,
    body_of,
    fingerprint,
    handshake,
    make_inbox,
    rng,
    text,
)


def _restore(channel: pw.Channel) -> pw.Channel:
    restored = pw.Channel.from_bytes(channel.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert fingerprint(restored) == fingerprint(channel)
    return restored


def _unconfirmed(r: pw.RandomBytes) -> tuple[pw.Channel, pw.Channel]:
    """Inviter and acceptor after the acceptance, the first confirmation dropped."""
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    bob, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    alice, effects = pending.receive(accept.block, now_ms=NOW, rng=r)
    dropped = effects[1]
    assert isinstance(dropped, pw.SendBlock) and dropped.header.seq == 0
    return alice, bob


def _ask_again(alice: pw.Channel, bob: pw.Channel, r: pw.RandomBytes) -> pw.SendBlock:
    """Something later arrives, the acceptor asks for what is missing, and the inviter
    answers the way the client service does: a confirmation for a number that carried one."""
    assert body_of(recv(bob, text(alice, b"are you there?", r), r)) == b"are you there?"
    (lost,) = bob.missing()
    asked = recv(alice, bob.request_resend(now_ms=NOW, rng=r).block, r)
    assert isinstance(asked, pw.ResendRequested) and asked.seqs == (lost,)
    assert alice.carried_confirmation(lost)
    return alice.resend_confirmation(now_ms=NOW, rng=r)


@pytest.mark.parametrize("losses", [2, 3, 5])
def test_a_confirmation_lost_again_and_again_ends_confirmed(losses: int) -> None:
    """The bug this guards against: the resent confirmation went out under a new number, and
    a request for that number was not recognised, so the acceptor stayed unconfirmed for
    good. Every step also survives a restart of both sides."""
    r = rng(70)
    alice, bob = _unconfirmed(r)
    for _ in range(losses - 1):
        _ask_again(alice, bob, r)  # and the relay drops this copy too
        alice, bob = _restore(alice), _restore(bob)
        assert not bob.confirmed
    last = _ask_again(alice, bob, r)
    got = recv(bob, last.block, r)
    assert isinstance(got, pw.Confirmed)
    assert bob.confirmed and bob.missing() == ()
    key = CRYPTO.signing_public_key(alice.outbox.auth_seed)
    assert got.secure == pw.SecureInbox(bob.inbox.recipient_id, key)
    assert bob.inbox_sender_key == key
    # The channel is whole: a move (refused before the confirmation) now works.
    moved = recv(alice, bob.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r).block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(bob, moved.send.block, r), pw.InboxMoved)


def test_only_confirmation_numbers_are_recognised() -> None:
    r = rng(71)
    alice, bob = _unconfirmed(r)
    sent = alice.send(b"a text", now_ms=NOW, rng=r)
    assert alice.carried_confirmation(0)
    assert not alice.carried_confirmation(sent.header.seq)
    again = alice.resend_confirmation(now_ms=NOW, rng=r)
    assert alice.carried_confirmation(again.header.seq)
    assert not any(bob.carried_confirmation(s) for s in range(3))  # the acceptor sends none


def test_a_repeated_confirmation_is_ignored_and_fills_its_number() -> None:
    """Two confirmations reach the acceptor (the first was late, not lost): the second must
    not be an error, or its number would stay missing and be asked for, for ever."""
    pair = handshake(72)
    r = rng(72)
    before = pair.bob.inbox_sender_key
    repeat = pair.alice.resend_confirmation(now_ms=NOW, rng=r)
    assert body_of(recv(pair.bob, text(pair.alice, b"after", r), r)) == b"after"
    assert pair.bob.missing() == (repeat.header.seq,)
    got = recv(pair.bob, repeat.block, r)
    assert isinstance(got, pw.Ignored) and got.header.seq == repeat.header.seq
    assert pair.bob.missing() == () and pair.bob.inbox_sender_key == before
    with pytest.raises(DecryptError):  # the window moved: the same block is a replay now
        recv(pair.bob, repeat.block, r)


def test_a_confirmation_with_another_key_is_refused_and_changes_nothing() -> None:
    """A captured or buggy inviter tries to re-key the acceptor's inbox with a second
    confirmation (for the right invitation, properly encrypted): refused, nothing moved, and
    the genuine repeat that follows is still accepted."""
    pair = handshake(73)
    r = rng(73)
    other_key = CRYPTO.signing_public_key(r(32))
    assert other_key != pair.bob.inbox_sender_key
    for body in (
        pw.ConfirmPayload(pair.invitation.invitation_id, other_key).to_bytes(),
        pw.ConfirmPayload(bytes(16), pair.bob.inbox_sender_key or b"").to_bytes(),
    ):
        bad = forged_control(pair.alice, MessageType.HANDSHAKE_CONFIRM, body, r)
        state = fingerprint(pair.bob)
        with pytest.raises(pw.HandshakeError):
            recv(pair.bob, bad, r)
        assert fingerprint(pair.bob) == state
    genuine = pair.alice.resend_confirmation(now_ms=NOW, rng=r)
    assert isinstance(recv(pair.bob, genuine.block, r), pw.Ignored)


def test_a_confirmation_to_the_inviter_is_still_refused() -> None:
    pair = handshake(74)
    r = rng(74)
    body = pw.ConfirmPayload(pair.invitation.invitation_id, bytes(32)).to_bytes()
    bad = forged_control(pair.bob, MessageType.HANDSHAKE_CONFIRM, body, r)
    state = fingerprint(pair.alice)
    with pytest.raises(pw.HandshakeError):
        recv(pair.alice, bad, r)
    assert fingerprint(pair.alice) == state


def test_a_late_confirmation_after_the_acceptor_moved_is_stale() -> None:
    """Once the acceptor's inbox moved, the key in a late confirmation secured a queue no
    longer in use: the repeat is ignored rather than refused (refusing it would make the
    acceptor ask for it for ever), and the inbox keeps the key the move gave it."""
    pair = handshake(75)
    r = rng(75)
    late = pair.alice.resend_confirmation(now_ms=NOW, rng=r)
    move = pair.bob.move_inbox(make_inbox(r, RELAY_C), now_ms=NOW, rng=r)
    moved = recv(pair.alice, move.block, r)
    assert isinstance(moved, pw.PeerMoved)
    assert isinstance(recv(pair.bob, moved.send.block, r), pw.InboxMoved)
    key = pair.bob.inbox_sender_key
    assert isinstance(recv(pair.bob, late.block, r), pw.Ignored)
    assert pair.bob.inbox_sender_key == key and pair.bob.missing() == ()


def test_older_states_load_and_recognise_only_the_first_confirmation() -> None:
    """A version 2 state (the same without the last field) loads as an inviter whose only
    known confirmation is number 0; it is written back as version 3."""
    r = rng(76)
    alice, _bob = _unconfirmed(r)
    current = fingerprint(alice)
    assert current[0] == pw.CHANNEL_STATE_VERSION == 3 and current[-8:] == bytes(8)
    v2 = pw.Channel.from_bytes(
        CRYPTO.seal(PICKLE_KEY, pw._CHANNEL_LABEL, b"\x02" + current[1:-8]), PICKLE_KEY, CRYPTO
    )
    assert fingerprint(v2) == current
    again = v2.resend_confirmation(now_ms=NOW, rng=r)
    restored = _restore(v2)
    assert restored.carried_confirmation(again.header.seq) and restored.carried_confirmation(0)


def test_a_corrupt_confirmation_number_is_refused() -> None:
    """Only a broken writer produces these: a number not yet used, or one on the acceptor."""
    pair = handshake(77)
    inviter = fingerprint(pair.alice)
    acceptor = fingerprint(pair.bob)
    for inner in (
        inviter[:-8] + pair.alice.next_seq.to_bytes(8, "big"),
        acceptor[:-8] + (1).to_bytes(8, "big"),
        inviter + b"\x00",
        inviter[:-1],
    ):
        with pytest.raises(pw.StateError):
            pw.Channel.from_bytes(
                CRYPTO.seal(PICKLE_KEY, pw._CHANNEL_LABEL, inner), PICKLE_KEY, CRYPTO
            )
