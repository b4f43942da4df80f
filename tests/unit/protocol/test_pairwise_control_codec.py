"""RECEIPT, MOVE and MOVE_ACK bodies: round trips, the layouts docs/protocol/pairwise.md shows,
and strict parsing that raises nothing but HandshakeError on hostile bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.errors import LocalProtocolError
from kith.protocol import pairwise as pw

ids = st.binary(min_size=16, max_size=16)
generations = st.integers(1, pw.MAX_MOVES)
relays = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
)
blocks = st.integers(1024, 65536)


@settings(max_examples=300)
@given(st.lists(ids, min_size=1, max_size=pw.MAX_RECEIPT, unique=True))
def test_receipt_round_trip(msg_ids: list[bytes]) -> None:
    body = pw.encode_receipt(tuple(msg_ids))
    assert len(body) == 2 + 16 * len(msg_ids)
    assert pw.decode_receipt(body) == tuple(msg_ids)


@settings(max_examples=300)
@given(generations, relays, ids, blocks)
def test_move_round_trip(generation: int, relay: str, sender_id: bytes, block: int) -> None:
    move = pw.MovePayload(generation, relay, sender_id, block)
    body = move.to_bytes()
    assert len(body) == 4 + 1 + len(relay) + 16 + 4
    assert pw.MovePayload.from_bytes(body) == move


@settings(max_examples=300)
@given(generations, ids, st.binary(min_size=32, max_size=32))
def test_move_ack_round_trip(generation: int, sender_id: bytes, key: bytes) -> None:
    ack = pw.MoveAckPayload(generation, sender_id, key)
    assert pw.MoveAckPayload.from_bytes(ack.to_bytes()) == ack


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_decoders_raise_only_handshake_errors(data: bytes) -> None:
    for decode in (pw.decode_receipt, pw.MovePayload.from_bytes, pw.MoveAckPayload.from_bytes):
        with contextlib.suppress(pw.HandshakeError):
            decode(data)


@settings(max_examples=300)
@given(generations, relays, ids, blocks, st.data())
def test_any_single_byte_change_of_a_move_is_refused_or_reads_differently(
    generation: int, relay: str, sender_id: bytes, block: int, data: st.DataObject
) -> None:
    """One encoding per value: a changed byte never decodes to the same MOVE."""
    move = pw.MovePayload(generation, relay, sender_id, block)
    body = bytearray(move.to_bytes())
    i = data.draw(st.integers(0, len(body) - 1))
    body[i] ^= data.draw(st.integers(1, 255))
    try:
        other = pw.MovePayload.from_bytes(bytes(body))
    except pw.HandshakeError:
        return
    assert other != move


def test_receipt_layout_is_as_documented() -> None:
    body = pw.encode_receipt((bytes(range(0x40, 0x50)), bytes(range(0x50, 0x60))))
    assert body == bytes.fromhex(
        "0002 404142434445464748494a4b4c4d4e4f 505152535455565758595a5b5c5d5e5f"
    )


def test_move_layouts_are_as_documented() -> None:
    move = pw.MovePayload(1, "ws://127.0.0.1:7003", b"\x22" * 16, 4096).to_bytes()
    assert move == bytes.fromhex(
        "00000001 13 77733a2f2f3132372e302e302e313a37303033"
        " 22222222222222222222222222222222 00001000"
    )
    assert len(move) == 44
    ack = pw.MoveAckPayload(1, b"\x22" * 16, b"\x77" * 32).to_bytes()
    assert ack == bytes.fromhex("00000001" + "22" * 16 + "77" * 32)
    assert len(ack) == 52


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: pw.encode_receipt(()), ValueError),
        (lambda: pw.encode_receipt((b"a" * 16,) * 2), ValueError),
        (lambda: pw.encode_receipt((b"a" * 15,)), ValueError),
        (lambda: pw.encode_receipt(tuple(i.to_bytes(16, "big") for i in range(257))), ValueError),
        (lambda: pw.MovePayload(0, "ws://x", bytes(16), 4096), ValueError),
        (lambda: pw.MovePayload(1 << 32, "ws://x", bytes(16), 4096), ValueError),
        (lambda: pw.MovePayload(1, "ws://x y", bytes(16), 4096), ValueError),
        (lambda: pw.MovePayload(1, "ws://x", bytes(15), 4096), ValueError),
        (lambda: pw.MovePayload(1, "ws://x", bytes(16), 512), LocalProtocolError),
        (lambda: pw.MoveAckPayload(0, bytes(16), bytes(32)), ValueError),
        (lambda: pw.MoveAckPayload(1, bytes(16), bytes(31)), ValueError),
    ],
)
def test_encoders_refuse_what_cannot_be_sent(
    make: Callable[[], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        make()
