"""The invitation handshake: both sides end with a session and a queue to each other; the
inviter refuses a reused, expired, forged or mismatched acceptance and then changes nothing."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto.interfaces import IdentityKeys, OlmKind
from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError, KithError
from kith.protocol import envelope as ev
from kith.protocol import invitation as inv
from kith.protocol import pairwise as pw
from tests.unit.protocol.pairwise_support import (
    NOW,
    PICKLE_KEY,
    RELAY_A,
    RELAY_B,
    body_of,
    handshake,
    make_inbox,
    rng,
    text,
)


def test_both_sides_end_with_a_channel_and_a_queue_to_each_other() -> None:
    pair = handshake()
    alice, bob = pair.alice, pair.bob
    assert alice.their_keys == bob.our_keys and bob.their_keys == alice.our_keys
    assert alice.our_keys == pair.invitation.identity
    # Queues: each sends to the other's inbox.
    assert bob.outbox.relay == RELAY_A and bob.outbox.sender_id == alice.inbox.sender_id
    assert alice.outbox.relay == RELAY_B and alice.outbox.sender_id == bob.inbox.sender_id
    # Each side secures its own inbox with the key the other proves when sending.
    secure_a = pair.inviter_effects[0]
    assert isinstance(secure_a, pw.SecureInbox)
    assert secure_a.recipient_id == alice.inbox.recipient_id
    assert secure_a.sender_key == CRYPTO.signing_public_key(bob.outbox.auth_seed)
    secure_b = pair.confirmed.secure
    assert secure_b.recipient_id == bob.inbox.recipient_id
    assert secure_b.sender_key == CRYPTO.signing_public_key(alice.outbox.auth_seed)
    assert alice.confirmed and bob.confirmed
    assert alice.inbox_sender_key == secure_a.sender_key
    assert bob.inbox_sender_key == secure_b.sender_key
    # The accept block went to the invitation's queue, padded to its relay's block.
    assert len(pair.accept_block) == 4096
    assert ev.decode_envelope(pair.accept_block).kind is OlmKind.PREKEY
    # And they can talk.
    r = rng(1)
    assert body_of(bob.receive(text(alice, b"hello bob", r))) == b"hello bob"
    assert body_of(alice.receive(text(bob, b"hello alice", r))) == b"hello alice"


def test_different_block_sizes_per_direction() -> None:
    pair = handshake(block_a=1024, block_b=8192)
    r = rng(2)
    to_bob = pair.alice.send(b"x", now_ms=NOW, rng=r)
    to_alice = pair.bob.send(b"y", now_ms=NOW, rng=r)
    assert len(to_bob.block) == 8192 and len(to_alice.block) == 1024
    assert pair.alice.max_body == ev.body_capacity(8192)
    assert body_of(pair.bob.receive(to_bob.block)) == b"x"
    assert body_of(pair.alice.receive(to_alice.block)) == b"y"


def test_acceptor_may_send_before_the_confirmation_arrives() -> None:
    r = rng(3)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    bob, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r, RELAY_B), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    early = bob.send(b"sent right away", now_ms=NOW, rng=r)
    assert ev.decode_envelope(early.block).kind is OlmKind.PREKEY
    states = [bob.confirmed]
    alice, effects = pending.receive(accept.block, now_ms=NOW, rng=r)
    assert body_of(alice.receive(early.block)) == b"sent right away"
    confirm = effects[1]
    assert isinstance(confirm, pw.SendBlock)
    assert isinstance(bob.receive(confirm.block), pw.Confirmed)
    states.append(bob.confirmed)
    assert states == [False, True]
    with pytest.raises(DecryptError):  # the confirmation cannot be replayed
        bob.receive(confirm.block)


def test_a_second_use_is_refused() -> None:
    pair = handshake()
    with pytest.raises(inv.InvitationUsed):
        pair.pending.receive(pair.accept_block, now_ms=NOW, rng=rng())
    # Someone else who scanned the same QR code is refused the same way.
    r = rng(7)
    _mallory, accept = pw.accept_invitation(
        pair.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    with pytest.raises(inv.InvitationUsed):
        pair.pending.receive(accept.block, now_ms=NOW, rng=r)
    # ...and the channel that now owns the queue does not take it either.
    with pytest.raises(DecryptError):
        pair.alice.receive(accept.block)
    assert pair.pending.used


def test_the_one_time_key_is_really_gone_after_use() -> None:
    """Even a stale copy of the pending invitation (restored from before the acceptance)
    cannot be used to answer a second acceptance once the channel's account is the truth:
    the one-time key is removed from the account that the channel keeps."""
    pair = handshake()
    r = rng(8)
    _, accept2 = pw.accept_invitation(
        pair.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    account = pair.alice._account
    env = ev.decode_envelope(accept2.block)
    assert env.sender_key is not None
    with pytest.raises(DecryptError):
        account.create_inbound(env.sender_key, env.ciphertext)


def test_expired_invitations_are_refused_on_both_sides() -> None:
    r = rng(4)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    expiry = pending.invitation.expires_at_ms
    with pytest.raises(inv.InvitationExpired):
        pw.accept_invitation(
            pending.invitation, inbox=make_inbox(r), now_ms=expiry, rng=r, crypto=CRYPTO
        )
    _, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r), now_ms=expiry - 1, rng=r, crypto=CRYPTO
    )
    with pytest.raises(inv.InvitationExpired):
        pending.receive(accept.block, now_ms=expiry, rng=r)
    assert not pending.used


def _accept_with(invitation: inv.Invitation, r: pw.RandomBytes, **changes: object) -> bytes:
    """An acceptance whose payload was altered by its sender: the acceptor's steps by hand."""
    account = CRYPTO.new_account()
    session = account.create_outbound(invitation.identity.curve25519, invitation.one_time_key)
    seed = r(32)
    payload = pw.AcceptPayload(
        invitation.invitation_id,
        account.identity_keys,
        RELAY_B,
        r(16),
        4096,
        CRYPTO.signing_public_key(seed),
        bytes(64),
    )
    payload = dataclasses.replace(
        payload,
        signature=account.sign(pw.accept_signing_payload(invitation, payload.signed_part())),
    )
    msg_type = int(changes.pop("msg_type", ev.MessageType.HANDSHAKE_ACCEPT))  # type: ignore[call-overload]
    seq = int(changes.pop("seq", 0))  # type: ignore[call-overload]
    if changes:
        payload = dataclasses.replace(payload, **changes)  # type: ignore[arg-type]
    header = ev.InnerHeader(msg_type, 0, r(16), NOW, seq)
    plaintext = ev.encode_inner(header, payload.to_bytes(), ev.plaintext_capacity(4096))
    kind, ct = session.encrypt(plaintext)
    block = ev.encode_envelope(ev.Envelope(kind, ct, account.identity_keys.curve25519), 4096)
    return block


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"invitation_id": bytes(16)}, pw.HandshakeError),
        ({"signature": bytes(64)}, DecryptError),
        ({"reply_sender_id": bytes(16)}, DecryptError),  # signed part changed after signing
        ({"identity": IdentityKeys(bytes(32), bytes([9]) * 32)}, pw.HandshakeError),
        ({"msg_type": ev.MessageType.TEXT}, pw.HandshakeError),
        ({"seq": 1}, pw.HandshakeError),
    ],
)
def test_bad_acceptances_are_refused_and_change_nothing(
    changes: dict[str, object], error: type[KithError]
) -> None:
    r = rng(5)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    before = pending.to_bytes(PICKLE_KEY)
    bad = _accept_with(pending.invitation, r, **changes)
    with pytest.raises(error):
        pending.receive(bad, now_ms=NOW, rng=r)
    assert not pending.used
    # The invitation still works for the genuine acceptor: the one-time key was not spent.
    restored = pw.PendingInvitation.from_bytes(before, PICKLE_KEY, CRYPTO)
    for candidate in (pending, restored):
        bob, accept = pw.accept_invitation(
            candidate.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
        )
        alice, _ = candidate.receive(accept.block, now_ms=NOW, rng=r)
        assert alice.their_keys == bob.our_keys


def test_garbage_on_the_invitation_queue_changes_nothing() -> None:
    r = rng(6)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    _, accept = pw.accept_invitation(
        pending.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    normal = ev.encode_envelope(ev.Envelope(OlmKind.NORMAL, b"\x01" * 50), 4096)
    garbage = [b"", bytes(4096), normal, accept.block[:100], accept.block[:-1] + b"\x01"]
    garbage += [
        accept.block[:i] + bytes([accept.block[i] ^ 0x40]) + accept.block[i + 1 :]
        for i in range(0, 600, 7)
    ]
    for block in garbage:
        with pytest.raises(KithError):
            pending.receive(block, now_ms=NOW, rng=r)
        assert not pending.used
    _alice, _ = pending.receive(accept.block, now_ms=NOW, rng=r)
    assert pending.used


def test_pending_invitation_persists_before_and_after_use() -> None:
    r = rng(7)
    pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    restored = pw.PendingInvitation.from_bytes(pending.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert restored.invitation == pending.invitation and restored.inbox == pending.inbox
    assert not restored.used
    _, accept = pw.accept_invitation(
        restored.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    restored.receive(accept.block, now_ms=NOW, rng=r)
    used = pw.PendingInvitation.from_bytes(restored.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert used.used
    with pytest.raises(inv.InvitationUsed):
        used.receive(accept.block, now_ms=NOW, rng=r)
    with pytest.raises(DecryptError):
        pw.PendingInvitation.from_bytes(pending.to_bytes(PICKLE_KEY), bytes(32), CRYPTO)
    with pytest.raises(DecryptError):  # a channel blob is not an invitation blob
        pw.PendingInvitation.from_bytes(handshake().alice.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)


# --------------------------------------------------------------------------- payload codecs

key32 = st.binary(min_size=32, max_size=32)
accepts = st.builds(
    pw.AcceptPayload,
    invitation_id=st.binary(min_size=16, max_size=16),
    identity=st.builds(IdentityKeys, key32, key32),
    reply_relay=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
    ),
    reply_sender_id=st.binary(min_size=16, max_size=16),
    reply_block_size=st.integers(1024, 65536),
    sender_key=key32,
    signature=st.binary(min_size=64, max_size=64),
)


@settings(max_examples=200)
@given(accepts)
def test_accept_payload_round_trip(payload: pw.AcceptPayload) -> None:
    assert pw.AcceptPayload.from_bytes(payload.to_bytes()) == payload


@settings(max_examples=100)
@given(st.binary(min_size=16, max_size=16), key32)
def test_confirm_payload_round_trip(invitation_id: bytes, key: bytes) -> None:
    payload = pw.ConfirmPayload(invitation_id, key)
    assert pw.ConfirmPayload.from_bytes(payload.to_bytes()) == payload


@settings(max_examples=100)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=pw.MAX_RESEND).map(tuple))
def test_resend_request_round_trip(seqs: tuple[int, ...]) -> None:
    assert pw.decode_resend_request(pw.encode_resend_request(seqs)) == seqs


@settings(max_examples=300)
@given(st.binary(max_size=700))
def test_payload_decoders_raise_only_handshake_errors(data: bytes) -> None:
    for decode in (
        pw.AcceptPayload.from_bytes,
        pw.ConfirmPayload.from_bytes,
        pw.decode_resend_request,
    ):
        with contextlib.suppress(pw.HandshakeError):
            decode(data)


def test_accept_payload_refuses_bad_block_size() -> None:
    good = pw.AcceptPayload(
        bytes(16), IdentityKeys(bytes(32), bytes(32)), "r", bytes(16), 4096, bytes(32), bytes(64)
    )
    raw = good.to_bytes()
    bad = raw[: 16 + 64 + 2 + 16] + (100).to_bytes(4, "big") + raw[16 + 64 + 2 + 16 + 4 :]
    with pytest.raises(pw.HandshakeError):
        pw.AcceptPayload.from_bytes(bad)
    with pytest.raises(pw.HandshakeError):
        pw.decode_resend_request(b"\x00\x00")


def test_an_acceptance_of_another_invitation_is_refused() -> None:
    r = rng(30)
    mine = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    other = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
    _, accept = pw.accept_invitation(
        other.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
    )
    before = mine.to_bytes(PICKLE_KEY)
    with pytest.raises(DecryptError):
        mine.receive(accept.block, now_ms=NOW, rng=r)
    assert not mine.used
    restored = pw.PendingInvitation.from_bytes(before, PICKLE_KEY, CRYPTO)
    assert not restored.used
    other.receive(accept.block, now_ms=NOW, rng=r)  # where it belongs
