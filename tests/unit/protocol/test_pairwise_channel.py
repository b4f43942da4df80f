"""The channel in normal use: headers, flags, sizes, persistence, out-of-order delivery beyond
what Olm can absorb, and resends."""

from __future__ import annotations

import pytest

from kith.crypto.interfaces import OlmKind
from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError, LocalProtocolError
from kith.protocol import envelope as ev
from kith.protocol import pairwise as pw
from kith.protocol.replay import WINDOW
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

#: vodozemac keeps at most this many skipped message keys per receiving chain.
OLM_SKIPPED_KEYS = 40


def test_headers_reach_the_recipient() -> None:
    pair = handshake()
    r = rng(1)
    sent = pair.alice.send(
        b"meet?", now_ms=NOW + 77, rng=r, msg_type=0x42, flags=int(ev.Flags.LIVENESS)
    )
    event = pair.bob.receive(sent.block)
    assert isinstance(event, pw.Received)
    assert event.header == sent.header
    assert event.header.msg_type == 0x42 and event.header.sent_at_ms == NOW + 77
    assert event.header.liveness and not event.header.duress
    assert event.header.seq == 1  # 0 was the handshake confirmation
    second = pair.alice.send(b"", now_ms=NOW, rng=r)
    assert second.header.seq == 2 and second.header.msg_id != sent.header.msg_id
    assert body_of(pair.bob.receive(second.block)) == b""


def test_flags_are_invisible_outside_the_ciphertext() -> None:
    """A duress-flagged message looks exactly like any other on the relay."""
    pair = handshake()
    r = rng(2)
    plain = pair.alice.send(b"all good", now_ms=NOW, rng=r)
    duress = pair.alice.send(b"all good", now_ms=NOW, rng=r, flags=int(ev.Flags.DURESS))
    assert len(plain.block) == len(duress.block)
    assert plain.block[:4] == duress.block[:4]  # version, kind and length all equal
    assert ev.decode_envelope(plain.block).kind is ev.decode_envelope(duress.block).kind
    pair.bob.receive(plain.block)
    event = pair.bob.receive(duress.block)
    assert isinstance(event, pw.Received) and event.header.duress


def test_lengths_are_hidden() -> None:
    pair = handshake()
    r = rng(3)
    sizes = {
        ev.decode_envelope(pair.alice.send(b"x" * n, now_ms=NOW, rng=r).block).ciphertext.__len__()
        for n in (0, 1, 200, 1000, pair.alice.max_body)
    }
    assert len(sizes) == 1


def test_body_limits_and_reserved_values() -> None:
    pair = handshake()
    r = rng(4)
    big = b"b" * pair.alice.max_body
    assert body_of(pair.bob.receive(pair.alice.send(big, now_ms=NOW, rng=r).block)) == big
    before = fingerprint(pair.alice)
    with pytest.raises(LocalProtocolError, match="split"):
        pair.alice.send(big + b"!", now_ms=NOW, rng=r)
    with pytest.raises(LocalProtocolError, match="reserved"):
        pair.alice.send(b"x", now_ms=NOW, rng=r, msg_type=ev.MessageType.HANDSHAKE_CONFIRM)
    with pytest.raises(LocalProtocolError, match="reserved"):
        pair.alice.send(b"x", now_ms=NOW, rng=r, flags=1 << 3)
    with pytest.raises(ValueError):
        pair.alice.send(b"x", now_ms=NOW, rng=r, msg_id=b"short")
    with pytest.raises(TypeError):
        pair.alice.send("text", now_ms=NOW, rng=r)  # type: ignore[arg-type]
    assert fingerprint(pair.alice) == before


def test_unknown_application_types_are_delivered() -> None:
    pair = handshake()
    sent = pair.alice.send(b"future", now_ms=NOW, rng=rng(5), msg_type=0xEE)
    event = pair.bob.receive(sent.block)
    assert isinstance(event, pw.Received) and event.header.msg_type == 0xEE


def test_smaller_buckets_can_be_chosen() -> None:
    pair = handshake()
    r = rng(6)
    pair.alice.padding = ev.Padding.for_block(4096, (256, 1024))
    small = pair.alice.send(b"hi", now_ms=NOW, rng=r)
    large = pair.alice.send(b"x" * 2000, now_ms=NOW, rng=r)
    assert len(small.block) == len(large.block) == 4096
    assert len(ev.decode_envelope(small.block).ciphertext) < 400
    assert body_of(pair.bob.receive(small.block)) == b"hi"
    assert body_of(pair.bob.receive(large.block)) == b"x" * 2000
    with pytest.raises(LocalProtocolError):
        pair.alice.padding = ev.Padding((256, 5000))


def test_persistence_mid_conversation() -> None:
    pair = handshake()
    r = rng(7)
    for i in range(3):
        pair.bob.receive(text(pair.alice, b"a%d" % i, r))
        pair.alice.receive(text(pair.bob, b"b%d" % i, r))
    alice = pw.Channel.from_bytes(pair.alice.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    bob = pw.Channel.from_bytes(pair.bob.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert fingerprint(alice) == fingerprint(pair.alice)
    assert alice.their_keys == pair.alice.their_keys and alice.inbox == pair.alice.inbox
    assert alice.outbox == pair.alice.outbox and alice.next_seq == pair.alice.next_seq
    assert bob.confirmed and bob.inbox_sender_key == pair.bob.inbox_sender_key
    assert body_of(bob.receive(text(alice, b"after restore", r))) == b"after restore"
    assert body_of(alice.receive(text(bob, b"and back", r))) == b"and back"


def test_unconfirmed_acceptor_persists() -> None:
    r = rng(8)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    bob, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    bob = pw.Channel.from_bytes(bob.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert not bob.confirmed and bob.inbox_sender_key is None
    _alice, effects = pending.receive(accept.block, now_ms=NOW, rng=r)
    confirm = effects[1]
    assert isinstance(confirm, pw.SendBlock)
    assert isinstance(bob.receive(confirm.block), pw.Confirmed)


def test_sealed_state_refuses_wrong_key_and_tampering() -> None:
    pair = handshake()
    blob = pair.alice.to_bytes(PICKLE_KEY)
    with pytest.raises(DecryptError):
        pw.Channel.from_bytes(blob, bytes(32), CRYPTO)
    for i in (0, 1, 40, len(blob) // 2, len(blob) - 1):
        with pytest.raises(DecryptError):
            pw.Channel.from_bytes(
                blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1 :], PICKLE_KEY, CRYPTO
            )
    with pytest.raises(ValueError):
        pair.alice.to_bytes(b"short")
    # Well sealed but malformed inside (only a corrupted writer could produce it).
    for inner in (b"", b"\x02", b"\x01\x00" + bytes(10)):
        bad = CRYPTO.seal(PICKLE_KEY, pw._CHANNEL_LABEL, inner)
        with pytest.raises(pw.StateError):
            pw.Channel.from_bytes(bad, PICKLE_KEY, CRYPTO)


def test_reordering_within_olms_limit_is_transparent() -> None:
    pair = handshake()
    r = rng(9)
    blocks = [text(pair.alice, b"m%d" % i, r) for i in range(OLM_SKIPPED_KEYS)]
    for i in reversed(range(OLM_SKIPPED_KEYS)):
        assert body_of(pair.bob.receive(blocks[i])) == b"m%d" % i
    assert pair.bob.missing() == ()


def test_delivery_beyond_olms_skipped_key_limit_loses_keys_not_messages() -> None:
    """vodozemac keeps 40 skipped keys per chain. When a message arrives 45 places early, the
    4 oldest keys are gone: those messages fail (typed error, nothing changes), kith sees the
    gap by sequence number, asks for a resend, and the sender re-encrypts the content under
    the current ratchet with the original message id. Nothing is lost silently."""
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    r = rng(10)
    outbox: dict[int, tuple[ev.InnerHeader, bytes]] = {}
    sent = []
    for i in range(45):
        body = b"msg %d" % i
        out = alice.send(body, now_ms=NOW + i, rng=r)
        outbox[out.header.seq] = (out.header, body)
        sent.append(out)
    assert body_of(bob.receive(sent[44].block)) == b"msg 44"
    lost = sent[:4]
    for out in lost:
        before = fingerprint(bob)
        with pytest.raises(DecryptError):
            bob.receive(out.block)
        assert fingerprint(bob) == before
    for out in sent[4:44]:
        assert body_of(bob.receive(out.block)) == outbox[out.header.seq][1]
    lost_seqs = tuple(out.header.seq for out in lost)
    assert bob.missing() == lost_seqs

    request = bob.request_resend(now_ms=NOW, rng=r)
    assert bob.missing() == ()
    event = alice.receive(request.block)
    assert isinstance(event, pw.ResendRequested) and event.seqs == lost_seqs
    for seq in event.seqs:
        header, body = outbox[seq]
        again = alice.send(body, now_ms=NOW, rng=r, msg_type=header.msg_type, msg_id=header.msg_id)
        got = bob.receive(again.block)
        assert isinstance(got, pw.Received)
        assert got.body == body and got.header.msg_id == header.msg_id
        assert got.header.seq != seq  # a new number; the id names the message
    # The conversation goes on in both directions.
    assert body_of(bob.receive(text(alice, b"still here", r))) == b"still here"
    assert body_of(alice.receive(text(bob, b"me too", r))) == b"me too"


def test_a_message_held_back_across_many_ratchet_turns_is_recovered_by_resend() -> None:
    """vodozemac also keeps only the 5 newest receiving chains: a message held back while the
    ratchet turns 6 times can no longer be decrypted. The gap shows, the resend fills it."""
    pair = handshake()
    r = rng(14)
    held = pair.alice.send(b"held back", now_ms=NOW, rng=r)
    for i in range(6):
        pair.alice.receive(text(pair.bob, b"b%d" % i, r))
        pair.bob.receive(text(pair.alice, b"a%d" % i, r))
    assert pair.bob.missing() == (held.header.seq,)
    before = fingerprint(pair.bob)
    with pytest.raises(DecryptError):
        pair.bob.receive(held.block)
    assert fingerprint(pair.bob) == before
    event = pair.alice.receive(pair.bob.request_resend(now_ms=NOW, rng=r).block)
    assert isinstance(event, pw.ResendRequested) and event.seqs == (held.header.seq,)
    again = pair.alice.send(b"held back", now_ms=NOW, rng=r, msg_id=held.header.msg_id)
    got = pair.bob.receive(again.block)
    assert isinstance(got, pw.Received) and got.header.msg_id == held.header.msg_id


def test_a_late_original_after_its_resend_was_requested_is_refused() -> None:
    """Olm still holds the key (within 40), but kith gave the number up when it asked for a
    resend, so exactly one copy of the message is ever accepted."""
    pair = handshake()
    r = rng(11)
    first = pair.alice.send(b"late", now_ms=NOW, rng=r)
    second = pair.alice.send(b"early", now_ms=NOW, rng=r)
    pair.bob.receive(second.block)
    assert pair.bob.missing() == (first.header.seq,)
    request = pair.bob.request_resend((first.header.seq,), now_ms=NOW, rng=r)
    before = fingerprint(pair.bob)
    with pytest.raises(DecryptError):
        pair.bob.receive(first.block)
    assert fingerprint(pair.bob) == before
    assert isinstance(pair.alice.receive(request.block), pw.ResendRequested)


def test_resend_request_limits() -> None:
    pair = handshake()
    r = rng(12)
    with pytest.raises(LocalProtocolError):
        pair.bob.request_resend(now_ms=NOW, rng=r)  # nothing missing
    with pytest.raises(LocalProtocolError):
        pair.bob.request_resend(tuple(range(pw.MAX_RESEND + 1)), now_ms=NOW, rng=r)


def test_window_is_wider_than_olms_gap_limit() -> None:
    assert WINDOW > 2000  # vodozemac refuses gaps over 2000 messages in one chain


def test_prekey_messages_stop_after_the_first_reply() -> None:
    pair = handshake()
    r = rng(13)
    kinds = [ev.decode_envelope(text(pair.bob, b"x", r)).kind for _ in range(2)]
    assert kinds == [OlmKind.NORMAL, OlmKind.NORMAL]  # bob received the confirmation


def test_a_lost_confirmation_is_recovered() -> None:
    """The relay drops the inviter's confirmation; the acceptor notices the gap at seq 0 once
    anything else arrives, asks, and the inviter confirms again."""
    r = rng(15)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    bob, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    alice, _dropped = pending.receive(accept.block, now_ms=NOW, rng=r)
    assert body_of(bob.receive(text(alice, b"hello?", r))) == b"hello?"
    assert bob.missing() == (0,)
    event = alice.receive(bob.request_resend(now_ms=NOW, rng=r).block)
    assert isinstance(event, pw.ResendRequested) and event.seqs == (0,)
    got = bob.receive(alice.resend_confirmation(now_ms=NOW, rng=r).block)
    assert isinstance(got, pw.Confirmed)
    assert got.secure.sender_key == CRYPTO.signing_public_key(alice.outbox.auth_seed)
    assert bob.confirmed
    with pytest.raises(LocalProtocolError):
        bob.resend_confirmation(now_ms=NOW, rng=r)
    # A second one (the inviter answered a request whose first answer arrived after all) is
    # a harmless repeat: see test_pairwise_confirmation.py.
    assert isinstance(bob.receive(alice.resend_confirmation(now_ms=NOW, rng=r).block), pw.Ignored)


def test_only_missing_numbers_can_be_requested() -> None:
    pair = handshake()
    r = rng(16)
    pair.bob.receive(text(pair.alice, b"x", r))
    with pytest.raises(LocalProtocolError, match="missing"):
        pair.bob.request_resend((1,), now_ms=NOW, rng=r)
