"""Tests that play the attacker on a live channel: a relay (or anyone on the path) that
captures, flips, truncates, replays, reorders, drops and misdirects blocks, and a captor who
takes a device's state. Every refusal is a typed error, leaves the channel exactly as it was,
and the conversation continues afterwards."""

from __future__ import annotations

import random

import pytest

from kith.crypto.interfaces import OlmKind
from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError, KithError
from kith.protocol import envelope as ev
from kith.protocol import pairwise as pw
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


def _refused(channel: pw.Channel, block: bytes, error: type[KithError] = KithError) -> None:
    before = fingerprint(channel)
    with pytest.raises(error):
        channel.receive(block)
    assert fingerprint(channel) == before


def _still_talking(pair: Pair, tag: bytes) -> None:
    r = rng(len(tag))
    assert body_of(pair.bob.receive(text(pair.alice, b"a:" + tag, r))) == b"a:" + tag
    assert body_of(pair.alice.receive(text(pair.bob, b"b:" + tag, r))) == b"b:" + tag


# --------------------------------------------------------------------------- forward secrecy


def test_forward_secrecy_against_a_later_state_capture() -> None:
    """Capture ciphertexts, let the conversation move on, then seize both devices' complete
    state (sealed blob and its key): the captured messages stay unreadable."""
    pair = handshake()
    r = rng(1)
    captured = []
    for i in range(3):
        block = text(pair.alice, b"secret %d" % i, r)
        captured.append(block)
        pair.bob.receive(block)
    reply = text(pair.bob, b"secret reply", r)
    captured.append(reply)
    pair.alice.receive(reply)
    for i in range(3):  # a few ratchet turns
        pair.bob.receive(text(pair.alice, b"later %d" % i, r))
        pair.alice.receive(text(pair.bob, b"later %d" % i, r))
    seized_bob = pw.Channel.from_bytes(pair.bob.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    seized_alice = pw.Channel.from_bytes(pair.alice.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    for block in captured:
        for seized in (seized_bob, seized_alice):
            with pytest.raises(KithError):
                seized.receive(block)
    # Even handed straight to the Olm session, bypassing kith's replay window:
    for block, seized in zip(captured, [seized_bob] * 3 + [seized_alice], strict=True):
        env = ev.decode_envelope(block)
        with pytest.raises(DecryptError):
            seized._session.decrypt(env.kind, env.ciphertext)


def test_messages_sent_before_a_capture_and_not_yet_delivered_are_readable_only_once() -> None:
    """The honest counterpart: undelivered messages are decryptable by the seized state
    (their keys are still needed), which is why kith deletes on delivery and expires queues."""
    pair = handshake()
    r = rng(2)
    pending = text(pair.alice, b"in flight", r)
    seized = pw.Channel.from_bytes(pair.bob.to_bytes(PICKLE_KEY), PICKLE_KEY, CRYPTO)
    assert body_of(seized.receive(pending)) == b"in flight"
    _refused(seized, pending, DecryptError)


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("prekey", [True, False], ids=["pre-key", "normal"])
def test_every_flipped_byte_is_refused_and_changes_nothing(prekey: bool) -> None:
    r = rng(3)
    if prekey:
        # Bob's messages stay pre-key messages until he hears from Alice: take one early.
        pending = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO)
        bob, accept = pw.accept_invitation(
            pending.invitation, inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO
        )
        block = bob.send(b"early words", now_ms=NOW, rng=r).block
        receiver, _ = pending.receive(accept.block, now_ms=NOW, rng=r)
    else:
        pair = handshake()
        block = text(pair.alice, b"early words", r)
        receiver = pair.bob
    assert (ev.decode_envelope(block).kind is OlmKind.PREKEY) == prekey
    before = fingerprint(receiver)
    for i in range(len(block)):
        for mask in (0x01, 0x80):
            flipped = block[:i] + bytes([block[i] ^ mask]) + block[i + 1 :]
            with pytest.raises(KithError):
                receiver.receive(flipped)
    assert fingerprint(receiver) == before
    assert body_of(receiver.receive(block)) == b"early words"


def test_truncated_and_extended_blocks_are_refused() -> None:
    pair = handshake()
    block = text(pair.alice, b"whole", rng(4))
    olm_end = ev.ENVELOPE_HEADER_LEN + len(ev.decode_envelope(block).ciphertext)
    for cut in (0, 1, 3, 4, 20, olm_end - 1):
        _refused(pair.bob, block[:cut])
    _refused(pair.bob, block + b"\x01")
    # Cutting only zero padding leaves a valid (shorter) block: the relay enforces size.
    assert body_of(pair.bob.receive(block[:olm_end])) == b"whole"
    _still_talking(pair, b"truncate")


def test_a_spliced_block_is_refused() -> None:
    """Olm bytes of one message under the envelope of another, and halves of two messages."""
    pair = handshake()
    r = rng(5)
    a, b = text(pair.alice, b"first" * 10, r), text(pair.alice, b"second" * 10, r)
    half = len(ev.decode_envelope(a).ciphertext) // 2
    _refused(pair.bob, a[: 4 + half] + b[4 + half :])
    _refused(pair.bob, b[: 4 + half] + a[4 + half :])
    pair.bob.receive(a)
    pair.bob.receive(b)


# --------------------------------------------------------------------------- replay


def test_replays_are_refused() -> None:
    pair = handshake()
    r = rng(6)
    block = text(pair.alice, b"once", r)
    pair.bob.receive(block)
    _refused(pair.bob, block, DecryptError)
    _refused(pair.bob, pair.accept_block, DecryptError)  # the handshake, to the acceptor
    _refused(pair.alice, pair.accept_block)  # and to the inviter's channel
    _still_talking(pair, b"replay")


def test_replay_is_refused_even_when_olm_would_decrypt_it() -> None:
    """Simulates a session restored from an older copy (crash before saving, old backup):
    Olm decrypts the replay, kith's sequence window refuses it."""
    pair = handshake()
    r = rng(7)
    old_session = pair.bob._session.copy()
    block = text(pair.alice, b"pay 100", r)
    assert body_of(pair.bob.receive(block)) == b"pay 100"
    pair.bob._session = old_session  # rolled back Olm state, current window
    env = ev.decode_envelope(block)
    assert old_session.copy().decrypt(env.kind, env.ciphertext)  # Olm alone would accept it
    _refused(pair.bob, block, DecryptError)


def test_resend_requests_cannot_be_replayed() -> None:
    pair = handshake()
    r = rng(8)
    a, b = text(pair.alice, b"1", r), text(pair.alice, b"2", r)
    pair.bob.receive(b)
    request = pair.bob.request_resend(now_ms=NOW, rng=r)
    assert isinstance(pair.alice.receive(request.block), pw.ResendRequested)
    _refused(pair.alice, request.block, DecryptError)
    _refused(pair.bob, a, DecryptError)  # given up on when the resend was requested


# --------------------------------------------------------------------------- reorder, drop


def test_reorder_and_drop() -> None:
    pair = handshake()
    r = rng(9)
    blocks = [text(pair.alice, b"%d" % i, r) for i in range(10)]
    order = [3, 0, 9, 1, 2, 8]  # 4..7 dropped
    for i in order:
        assert body_of(pair.bob.receive(blocks[i])) == b"%d" % i
    dropped = tuple(pair.alice.next_seq - 10 + i for i in (4, 5, 6, 7))
    assert pair.bob.missing() == dropped
    _still_talking(pair, b"reorder")
    for i in order:  # and none of the delivered ones again
        _refused(pair.bob, blocks[i], DecryptError)


# --------------------------------------------------------------------------- misdirection


def test_blocks_for_another_channel_are_refused() -> None:
    """Alice talks to Bob and to Carol; a relay moves Bob's mail into Carol's channel."""
    bob_pair, carol_pair = handshake(seed=10), handshake(seed=11)
    r = rng(12)
    to_bob = text(bob_pair.alice, b"for bob", r)
    to_carol_from_alice = text(carol_pair.alice, b"for carol", r)
    _refused(carol_pair.bob, to_bob, DecryptError)
    _refused(bob_pair.bob, to_carol_from_alice, DecryptError)
    # Reflection: Alice's own block handed back to her.
    _refused(bob_pair.alice, to_bob, DecryptError)
    # Bob's early pre-key message delivered into Alice's channel with Carol.
    _refused(carol_pair.alice, bob_pair.accept_block)
    assert body_of(bob_pair.bob.receive(to_bob)) == b"for bob"
    assert body_of(carol_pair.bob.receive(to_carol_from_alice)) == b"for carol"
    _still_talking(bob_pair, b"misdirect")
    _still_talking(carol_pair, b"misdirect")


def test_garbage_never_raises_anything_but_kith_errors() -> None:
    pair = handshake()
    noise = random.Random(14)
    for n in (0, 1, 4, 36, 100, 4096):
        for _ in range(20):
            _refused(pair.bob, noise.randbytes(n))
    header_only = bytes([1, 1, 0, 50]) + noise.randbytes(50)
    _refused(pair.bob, header_only + bytes(4096 - len(header_only)))
    _still_talking(pair, b"garbage")
