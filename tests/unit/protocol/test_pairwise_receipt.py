"""Delivery receipts: the sender learns which of its messages the recipient stored; unknown ids
pass through to the client; malformed receipts are refused and change nothing."""

from __future__ import annotations

import pytest

from kith.errors import DecryptError, LocalProtocolError
from kith.protocol import envelope as ev
from kith.protocol import pairwise as pw
from tests.unit.protocol.control_support import forged_control
from tests.unit.protocol.pairwise_support import (
    NOW,
    body_of,
    fingerprint,
    handshake,
    rng,
    text,
)


def test_receipts_name_the_stored_messages() -> None:
    pair = handshake()
    r = rng(1)
    sent = [pair.alice.send(b"m%d" % i, now_ms=NOW, rng=r) for i in range(3)]
    for out in sent:
        body_of(pair.bob.receive(out.block))
    ids = tuple(out.header.msg_id for out in reversed(sent))
    receipt = pair.bob.send_receipt(ids, now_ms=NOW, rng=r)
    assert receipt.header.msg_type == ev.MessageType.RECEIPT
    assert receipt.queue == pair.bob.outbox and len(receipt.block) == 4096
    seq = pair.alice.next_seq
    event = pair.alice.receive(receipt.block)
    assert event == pw.Delivered(ids)  # in the order named
    # Receipts are not receipted: receiving one produced nothing to send.
    assert pair.alice.next_seq == seq
    # And the conversation goes on.
    assert body_of(pair.bob.receive(text(pair.alice, b"after", r))) == b"after"


def test_ids_the_sender_never_used_are_passed_on_not_refused() -> None:
    """The channel keeps no record of message ids; the client matches and ignores."""
    pair = handshake()
    r = rng(2)
    unknown = (bytes(16), b"\xff" * 16)
    event = pair.alice.receive(pair.bob.send_receipt(unknown, now_ms=NOW, rng=r).block)
    assert event == pw.Delivered(unknown)
    # Twice for the same id (a resent message receipted again) is fine too.
    again = pair.alice.receive(pair.bob.send_receipt(unknown[:1], now_ms=NOW, rng=r).block)
    assert again == pw.Delivered(unknown[:1])


def test_a_full_receipt_fits_one_block() -> None:
    for block in (1024, 4096, 65536):
        pair = handshake(block_a=block, block_b=block)
        capacity = pair.bob.receipt_capacity
        assert capacity == min(pw.MAX_RECEIPT, (ev.body_capacity(block) - 2) // 16)
        ids = tuple(i.to_bytes(16, "big") for i in range(capacity))
        out = pair.bob.send_receipt(ids, now_ms=NOW, rng=rng(3))
        assert len(out.block) == block
        assert pair.alice.receive(out.block) == pw.Delivered(ids)
    assert handshake(block_a=1024, block_b=1024).bob.receipt_capacity == 48


def test_smaller_padding_lowers_the_capacity() -> None:
    pair = handshake()
    pair.bob.padding = ev.Padding((100,))
    assert pair.bob.receipt_capacity == (100 - ev.INNER_HEADER_LEN - ev.BODY_LEN_PREFIX - 2) // 16
    ids = tuple(bytes([i]) * 16 for i in range(pair.bob.receipt_capacity))
    assert pair.alice.receive(pair.bob.send_receipt(ids, now_ms=NOW, rng=rng(4)).block)


@pytest.mark.parametrize(
    ("ids", "error"),
    [
        ((), LocalProtocolError),
        (tuple(i.to_bytes(16, "big") for i in range(49)), LocalProtocolError),  # over 48
        ((b"a" * 16, b"b" * 16, b"a" * 16), LocalProtocolError),
        ((b"short",), ValueError),
        (("a" * 16,), TypeError),
    ],
    ids=["empty", "too-many", "repeated", "short-id", "str-id"],
)
def test_bad_receipts_are_refused_before_sending(
    ids: tuple[bytes, ...], error: type[Exception]
) -> None:
    pair = handshake(block_a=1024, block_b=1024)
    before = fingerprint(pair.bob)
    with pytest.raises(error):
        pair.bob.send_receipt(ids, now_ms=NOW, rng=rng(5))
    assert fingerprint(pair.bob) == before


def test_a_receipt_cannot_be_sent_as_an_application_message() -> None:
    pair = handshake()
    with pytest.raises(LocalProtocolError, match="reserved"):
        pair.bob.send(bytes(18), now_ms=NOW, rng=rng(6), msg_type=ev.MessageType.RECEIPT)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00",
        b"\x00\x00",  # count 0
        b"\x00\x01" + bytes(15),  # truncated id
        b"\x00\x01" + bytes(17),  # trailing byte
        b"\x00\x02" + bytes(32),  # the same id twice
        b"\x01\x01" + bytes(16 * 257),  # count over the maximum (in a large block)
    ],
    ids=["empty", "short-count", "zero", "truncated", "trailing", "repeated", "too-many"],
)
def test_malformed_receipts_from_the_peer_are_refused_and_change_nothing(body: bytes) -> None:
    pair = handshake(block_a=8192, block_b=8192)
    r = rng(7)
    block = forged_control(pair.bob, ev.MessageType.RECEIPT, body, r)
    before = fingerprint(pair.alice)
    with pytest.raises(pw.HandshakeError):
        pair.alice.receive(block)
    assert fingerprint(pair.alice) == before
    assert body_of(pair.alice.receive(text(pair.bob, b"still here", r))) == b"still here"


def test_receipts_cannot_be_replayed() -> None:
    pair = handshake()
    r = rng(8)
    receipt = pair.bob.send_receipt((b"r" * 16,), now_ms=NOW, rng=r).block
    assert isinstance(pair.alice.receive(receipt), pw.Delivered)
    before = fingerprint(pair.alice)
    with pytest.raises(DecryptError):
        pair.alice.receive(receipt)
    assert fingerprint(pair.alice) == before


def test_a_lost_receipt_is_seen_as_a_gap_and_sent_again() -> None:
    """The relay drops a receipt: the sender sees the gap, asks, and the recipient's client
    receipts the same ids again (receipts are idempotent)."""
    pair = handshake()
    r = rng(9)
    ids = (b"i" * 16,)
    lost = pair.bob.send_receipt(ids, now_ms=NOW, rng=r)
    body_of(pair.alice.receive(text(pair.bob, b"later", r)))
    assert pair.alice.missing() == (lost.header.seq,)
    asked = pair.bob.receive(pair.alice.request_resend(now_ms=NOW, rng=r).block)
    assert asked == pw.ResendRequested((lost.header.seq,))
    again = pair.bob.send_receipt(ids, now_ms=NOW, rng=r)
    assert pair.alice.receive(again.block) == pw.Delivered(ids)
    with pytest.raises(DecryptError):  # the original was given up on
        pair.alice.receive(lost.block)
