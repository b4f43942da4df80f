"""Block envelope, inner header and padding: round trips, strict parsing, sizes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto.interfaces import OlmKind, olm_message_len
from kith.errors import KithError, LocalProtocolError
from kith.protocol import envelope as ev

blocks = st.integers(ev.MIN_PAIRWISE_BLOCK, 8192)
headers = st.builds(
    ev.InnerHeader,
    msg_type=st.integers(0, 255),
    flags=st.integers(0, 0xFFFF),
    msg_id=st.binary(min_size=16, max_size=16),
    sent_at_ms=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
)


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[ev.Envelope, int]:
    block = draw(blocks)
    kind = draw(st.sampled_from(list(OlmKind)))
    key = draw(st.binary(min_size=32, max_size=32)) if kind is OlmKind.PREKEY else None
    room = block - ev.ENVELOPE_HEADER_LEN - (32 if key else 0)
    ct = draw(st.binary(min_size=1, max_size=min(room, 3000)))
    return ev.Envelope(kind, ct, key), block


@settings(max_examples=300)
@given(envelopes())
def test_envelope_round_trip(case: tuple[ev.Envelope, int]) -> None:
    envelope, block_size = case
    block = ev.encode_envelope(envelope, block_size)
    assert len(block) == block_size
    assert ev.decode_envelope(block) == envelope


@settings(max_examples=300)
@given(headers, st.binary(max_size=600), st.integers(0, 300))
def test_inner_round_trip(header: ev.InnerHeader, body: bytes, slack: int) -> None:
    size = ev.INNER_HEADER_LEN + ev.BODY_LEN_PREFIX + len(body) + slack
    plaintext = ev.encode_inner(header, body, size)
    assert len(plaintext) == size
    assert ev.decode_inner(plaintext) == (header, body)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decoders_raise_only_envelope_errors(data: bytes) -> None:
    for decode in (ev.decode_envelope, ev.decode_inner):
        with contextlib.suppress(ev.EnvelopeError):
            decode(data)


def test_inner_header_layout_is_as_documented() -> None:
    header = ev.InnerHeader(0x10, int(ev.Flags.DURESS), bytes(range(16)), 0x0102030405060708, 9)
    plaintext = ev.encode_inner(header, b"hi", 64)
    assert plaintext[:4] == bytes([1, 0x10, 0, 1])
    assert plaintext[4:20] == bytes(range(16))
    assert plaintext[20:28] == bytes.fromhex("0102030405060708")
    assert plaintext[28:36] == (9).to_bytes(8, "big")
    assert plaintext[36:40] == b"\x00\x02hi"
    assert plaintext[40:] == bytes(24)
    assert header.duress and not header.liveness and not header.quarantine


def test_envelope_layout_is_as_documented() -> None:
    block = ev.encode_envelope(ev.Envelope(OlmKind.PREKEY, b"\xaa" * 5, b"\xbb" * 32), 1024)
    assert block[:4] == bytes([1, 0, 0, 5])
    assert block[4:36] == b"\xbb" * 32
    assert block[36:41] == b"\xaa" * 5
    assert block[41:] == bytes(1024 - 41)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b"\x02" + b[1:], "version"),
        (lambda b: b[:1] + b"\x07" + b[2:], "kind"),
        (lambda b: b[:2] + b"\x00\x00" + b[4:], "empty"),
        (lambda b: b[:2] + b"\xff\xff" + b[4:], "truncated"),
        (lambda b: b[:-1] + b"\x01", "padding"),
        (lambda b: b[:3], "truncated"),
        (lambda b: b"", "truncated"),
    ],
)
def test_bad_envelopes_are_refused(mutate: object, reason: str) -> None:
    block = ev.encode_envelope(ev.Envelope(OlmKind.NORMAL, b"\x01" * 100), 1024)
    assert callable(mutate)
    with pytest.raises(ev.EnvelopeError, match=reason):
        ev.decode_envelope(mutate(block))


def test_bad_inner_plaintexts_are_refused() -> None:
    header = ev.InnerHeader(0x10, 0, bytes(16), 1, 1)
    good = ev.encode_inner(header, b"body", 100)
    with pytest.raises(ev.EnvelopeError, match="version"):
        ev.decode_inner(b"\x02" + good[1:])
    with pytest.raises(ev.EnvelopeError, match="padding"):
        ev.decode_inner(good[:-1] + b"\x01")
    with pytest.raises(ev.EnvelopeError, match="truncated"):
        ev.decode_inner(good[:36] + b"\x00\xff" + good[38:])
    with pytest.raises(ev.EnvelopeError, match="truncated"):
        ev.decode_inner(good[:20])


def test_encoders_refuse_what_does_not_fit() -> None:
    header = ev.InnerHeader(0x10, 0, bytes(16), 1, 1)
    with pytest.raises(LocalProtocolError):
        ev.encode_inner(header, b"x" * 100, 100)
    with pytest.raises(LocalProtocolError):
        ev.encode_envelope(ev.Envelope(OlmKind.NORMAL, b"x" * 2000), 1024)
    with pytest.raises(LocalProtocolError):
        ev.encode_envelope(ev.Envelope(OlmKind.NORMAL, b"x"), 512)
    with pytest.raises(ValueError):
        ev.Envelope(OlmKind.NORMAL, b"x", bytes(32))
    with pytest.raises(ValueError):
        ev.Envelope(OlmKind.PREKEY, b"x")
    with pytest.raises(ValueError):
        ev.InnerHeader(256, 0, bytes(16), 0, 0)
    with pytest.raises(ValueError):
        ev.InnerHeader(1, 0, bytes(15), 0, 0)


@pytest.mark.parametrize("block_size", [1024, 4096, 16384, 65536])
def test_capacity_fills_the_block_in_the_worst_case(block_size: int) -> None:
    """The largest plaintext, as a pre-key message with a 10-byte chain index, still fits,
    and one byte more would not: the default bucket wastes nothing and overflows never."""
    p = ev.plaintext_capacity(block_size)
    worst = ev.ENVELOPE_HEADER_LEN + 32 + olm_message_len(p, OlmKind.PREKEY)
    assert worst <= block_size
    assert ev.ENVELOPE_HEADER_LEN + 32 + olm_message_len(p + 1, OlmKind.PREKEY) > block_size
    assert ev.body_capacity(block_size) == p - 38
    # Typical messages leave only a small zero tail: the relay learns nothing from it.
    typical = ev.ENVELOPE_HEADER_LEN + olm_message_len(p, OlmKind.NORMAL, 1000)
    assert block_size - typical < 160


def test_default_4096_capacity() -> None:
    assert ev.plaintext_capacity(4096) == 3887
    assert ev.body_capacity(4096) == 3849


def test_padding_buckets() -> None:
    default = ev.Padding.for_block(4096)
    assert default.buckets == (3887,)
    assert default.size_for(0) == default.size_for(3849) == 3887
    with pytest.raises(LocalProtocolError, match="split"):
        default.size_for(3850)
    three = ev.Padding.for_block(4096, (256, 1024, 99999))
    assert three.buckets == (256, 1024, 3887)
    assert three.size_for(0) == 256
    assert three.size_for(256 - 38) == 256
    assert three.size_for(256 - 37) == 1024
    assert three.size_for(1000) == 3887
    with pytest.raises(ValueError):
        ev.Padding((1024, 256))
    with pytest.raises(ValueError):
        ev.Padding((10,))
    with pytest.raises(ValueError):
        ev.Padding(())


@settings(max_examples=200)
@given(st.lists(st.integers(38, 4000), max_size=4), st.integers(0, 3849))
def test_padding_hides_the_length_within_a_bucket(extra: list[int], body_len: int) -> None:
    padding = ev.Padding.for_block(4096, tuple(extra))
    size = padding.size_for(body_len)
    assert size in padding.buckets
    smaller = [b for b in padding.buckets if b < size]
    assert all(b < 38 + body_len for b in smaller)  # the smallest bucket that fits


def test_reserved_flags_are_named() -> None:
    assert ev.KNOWN_FLAGS == 0b111
    assert issubclass(ev.EnvelopeError, KithError)
