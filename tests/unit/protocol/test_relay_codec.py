"""Property tests for the relay frame codec: every frame round-trips, and no byte string
makes the decoders raise anything but FrameError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.protocol import relay as p

BLOCK = 300

corr = st.integers(0, 2**32 - 1)
ident = st.binary(min_size=p.ID_LEN, max_size=p.ID_LEN)
key = st.binary(min_size=p.KEY_LEN, max_size=p.KEY_LEN)
sig = st.binary(min_size=p.SIG_LEN, max_size=p.SIG_LEN)
block = st.binary(min_size=BLOCK, max_size=BLOCK)

commands = st.one_of(
    st.builds(p.Ping, corr),
    st.builds(p.New, corr, key),
    st.builds(p.Sub, corr, ident, sig),
    st.builds(p.Key, corr, ident, key, sig),
    st.builds(p.SAuth, corr, ident, sig),
    st.builds(p.Send, corr, ident, block),
    st.builds(p.Ack, corr, ident, ident, st.booleans()),
    st.builds(p.Del, corr, ident, sig),
)
replies = st.one_of(
    st.builds(p.Ok, corr),
    st.builds(p.Pong, corr),
    st.builds(p.Ids, corr, ident, ident),
    st.builds(p.Msg, ident, ident, st.integers(0, 2**64 - 1), block),
    st.builds(p.End, ident),
    st.builds(p.Err, corr, st.sampled_from(list(p.ErrorCode))),
    st.builds(
        p.Hello,
        st.just(1),
        st.just(1),
        st.binary(min_size=32, max_size=32),
        st.integers(p.MIN_BLOCK_SIZE, p.MAX_BLOCK_SIZE),
        st.integers(1, 65535),
    ),
)


@given(commands)
def test_commands_round_trip(frame: p.Command) -> None:
    assert p.decode_command(p.encode(frame), BLOCK) == frame


@given(replies)
def test_replies_round_trip(frame: p.Reply) -> None:
    bs = frame.block_size if isinstance(frame, p.Hello) else BLOCK
    assert p.decode_reply(p.encode(frame), bs) == frame


@settings(max_examples=2000)
@given(st.binary(max_size=BLOCK + 64))
def test_arbitrary_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    for decode in (lambda d: p.decode_command(d, BLOCK), lambda d: p.decode_reply(d, BLOCK)):
        try:
            decode(data)
        except p.FrameError as exc:
            assert isinstance(exc.code, p.ErrorCode)


@given(commands, st.data())
def test_every_truncation_of_a_command_is_refused(frame: p.Command, data: st.DataObject) -> None:
    raw = p.encode(frame)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(p.FrameError):
        p.decode_command(raw[:cut], BLOCK)


@given(commands, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(frame: p.Command, extra: bytes) -> None:
    with pytest.raises(p.FrameError):
        p.decode_command(p.encode(frame) + extra, BLOCK)


@given(commands, st.integers(0, 255).filter(lambda v: v != p.VERSION))
def test_wrong_version_is_refused_with_its_corr_id(frame: p.Command, version: int) -> None:
    raw = bytearray(p.encode(frame))
    raw[0] = version
    with pytest.raises(p.FrameError) as info:
        p.decode_command(bytes(raw), BLOCK)
    assert info.value.code == p.ErrorCode.VERSION
    assert info.value.corr_id == int.from_bytes(raw[2:6], "big")


def test_encoder_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="recipient_id"):
        p.encode(p.Sub(1, b"short", b"s" * 64))
    with pytest.raises(TypeError):
        p.encode(object())  # type: ignore[arg-type]


def test_auth_payload_separates_commands_and_connections() -> None:
    rid = b"r" * 16
    payloads = {
        p.auth_payload(t, c, rid)
        for t in (p.FrameType.SUB, p.FrameType.DEL, p.FrameType.SAUTH)
        for c in (b"a" * 32, b"b" * 32)
    }
    assert len(payloads) == 6


def test_known_frame_bytes() -> None:
    """Pinned encodings, as printed in docs/protocol/relay.md."""
    assert p.encode(p.Ping(1)).hex() == "010100000001"
    assert p.encode(p.Err(7, p.ErrorCode.AUTH)).hex() == "018f000000070005"
    assert p.encode(p.Ack(2, bytes(16), b"\x11" * 16)).hex() == (
        "010700000002" + "00" * 16 + "11" * 16
    )
    assert p.encode(p.Ack(3, bytes(16), b"\x11" * 16, quiet=True)).hex() == (
        "010900000003" + "00" * 16 + "11" * 16
    )


@given(st.integers(0, 2**32 - 1))
def test_the_fast_ok_encoder_matches_the_general_one(corr: int) -> None:
    assert p.encode_ok(corr) == p.encode(p.Ok(corr))


@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
)
def test_the_fast_msg_encoder_matches_the_general_one(
    rid: bytes, msg_id: bytes, received_at: int, body: bytes
) -> None:
    assert p.encode_msg(rid, msg_id, received_at, body) == p.encode(
        p.Msg(rid, msg_id, received_at, body)
    )


def test_the_fast_msg_encoder_checks_sizes() -> None:
    with pytest.raises(ValueError):
        p.encode_msg(bytes(15), bytes(16), 0, b"")
    with pytest.raises(ValueError):
        p.encode_msg(bytes(16), bytes(17), 0, b"")
