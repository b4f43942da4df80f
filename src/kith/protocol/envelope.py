"""Pairwise wire formats: the fixed-size block on the relay and the plaintext inside Olm.

Theory of operation
-------------------
Every message between two contacts is one relay block (``block_size`` bytes, 4096 by default)::

    block  = version u8 | kind u8 | olm_len u16 | [sender_key 32, pre-key only]
             | olm message (olm_len bytes) | zero bytes up to block_size
    olm    = Olm( inner )
    inner  = version u8 | type u8 | flags u16 | msg_id 16 | sent_at_ms u64 | seq u64
             | body_len u16 | body | zero bytes up to the padding bucket

The relay sees only the first two layers' outer fields: envelope version, Olm message type,
Olm length (which, with the default single bucket, depends only on the Olm chain index, not
on the body) and, for pre-key messages, the sender's per-relationship Curve25519 key (also
present in clear inside every Olm pre-key message). Everything that describes the message
(type, flags, ids, times, length) is inside the ciphertext.

Padding is checked, not random: both the trailing bytes of the block and of the inner plaintext
must be zero, so flipping *any* byte of a block is detected (the Olm MAC covers the rest).
With the default policy the inner plaintext fills the block up to Olm's worst-case overhead, so
the zero tail of a block is at most a few dozen bytes and its length reveals nothing about the
body. Transports must not compress blocks (no WebSocket permessage-deflate): compression could
only measure that tail, and there is nothing to gain from it.

All parsing of untrusted bytes raises :class:`EnvelopeError` (a
:class:`~kith.errors.RemoteProtocolError`); misuse on the sending side raises
:class:`~kith.errors.LocalProtocolError` or ValueError/TypeError.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import Final

from kith.crypto.interfaces import KEY_LEN, OlmKind, max_olm_plaintext
from kith.errors import LocalProtocolError, RemoteProtocolError
from kith.protocol._reader import Reader, u16

ENVELOPE_VERSION: Final = 1
ENVELOPE_HEADER_LEN: Final = 4
INNER_VERSION: Final = 1
MSG_ID_LEN: Final = 16
INNER_HEADER_LEN: Final = 36
BODY_LEN_PREFIX: Final = 2
#: Smallest relay block a pairwise channel can use: the handshake must fit in one block.
MIN_PAIRWISE_BLOCK: Final = 1024
MAX_PAIRWISE_BLOCK: Final = 65536

_INNER: Final = struct.Struct(">BBH16sQQ")
_ENVELOPE: Final = struct.Struct(">BBH")


class EnvelopeError(RemoteProtocolError):
    """A block or a decrypted plaintext from the peer is malformed."""


class Flags(enum.IntFlag):
    """Bits of the inner header's ``flags``: seen only by the recipient, after decryption.

    Reserved now so that coercion resistance (roadmap stage 5) needs no format change. Bits
    not named here are reserved: senders must leave them zero; receivers keep them as sent.
    """

    DURESS = 1 << 0  #: sent under duress: do not meet, quarantine the sender
    LIVENESS = 1 << 1  #: a liveness check-in
    QUARANTINE = 1 << 2  #: the sender is quarantined by one of their circles


KNOWN_FLAGS: Final = int(Flags.DURESS | Flags.LIVENESS | Flags.QUARANTINE)


class MessageType(enum.IntEnum):
    """Inner message types. Below 0x10: the channel's own control messages; 0x10 and up:
    application messages, passed to the client as they are (unknown ones included)."""

    HANDSHAKE_ACCEPT = 0x01
    HANDSHAKE_CONFIRM = 0x02
    RESEND_REQUEST = 0x03
    RECEIPT = 0x04  #: the recipient stored these messages (by ``msg_id``)
    MOVE = 0x05  #: the sender's inbox moves to another queue: send there from now on
    MOVE_ACK = 0x06  #: answer to MOVE, sent on the new queue, with the key to secure it
    TEXT = 0x10


FIRST_APPLICATION_TYPE: Final = 0x10


@dataclass(frozen=True, slots=True)
class Envelope:
    """The outer layer of a block. ``sender_key`` is set exactly for pre-key messages."""

    kind: OlmKind
    ciphertext: bytes
    sender_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.kind is OlmKind.PREKEY) != (self.sender_key is not None):
            raise ValueError("sender_key is required for pre-key messages and only for them")
        if self.sender_key is not None and len(self.sender_key) != KEY_LEN:
            raise ValueError("sender_key must be 32 bytes")
        if not 1 <= len(self.ciphertext) <= 0xFFFF:
            raise ValueError("ciphertext must be 1..65535 bytes")


def _is_zero(data: bytes) -> bool:
    return data == bytes(len(data))


def check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or not (
        MIN_PAIRWISE_BLOCK <= block_size <= MAX_PAIRWISE_BLOCK
    ):
        raise LocalProtocolError(
            f"block size must be {MIN_PAIRWISE_BLOCK}..{MAX_PAIRWISE_BLOCK} for pairwise channels"
        )


def encode_envelope(envelope: Envelope, block_size: int) -> bytes:
    """One block of exactly ``block_size`` bytes, zero-padded."""
    check_block_size(block_size)
    head = _ENVELOPE.pack(ENVELOPE_VERSION, int(envelope.kind), len(envelope.ciphertext))
    out = head + (envelope.sender_key or b"") + envelope.ciphertext
    if len(out) > block_size:
        raise LocalProtocolError(f"Olm message of {len(out)} bytes exceeds the block")
    return out + bytes(block_size - len(out))


def decode_envelope(block: bytes) -> Envelope:
    """Parse a block. Any malformation (version, kind, length, non-zero tail) is an error."""
    r = Reader(block, EnvelopeError)
    version = r.u8("version")
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"envelope version {version} not spoken")
    raw_kind = r.u8("kind")
    if raw_kind not in (OlmKind.PREKEY, OlmKind.NORMAL):
        raise EnvelopeError(f"unknown message kind {raw_kind}")
    kind = OlmKind(raw_kind)
    length = r.u16("length")
    if length == 0:
        raise EnvelopeError("empty Olm message")
    sender_key = r.take(KEY_LEN, "sender key") if kind is OlmKind.PREKEY else None
    ciphertext = r.take(length, "Olm message")
    if not _is_zero(r.rest()):
        raise EnvelopeError("block padding is not zero")
    return Envelope(kind, ciphertext, sender_key)


# --------------------------------------------------------------------------- inner plaintext


@dataclass(frozen=True, slots=True)
class InnerHeader:
    """What the recipient learns about a message besides its body.

    ``seq`` counts messages per direction from 0 (handshake included); the receiver uses it to
    reject replays and to notice gaps. ``msg_id`` is random and names the message for the
    application (receipts, resends keep it).
    """

    msg_type: int
    flags: int
    msg_id: bytes
    sent_at_ms: int
    seq: int

    def __post_init__(self) -> None:
        if not 0 <= self.msg_type <= 0xFF:
            raise ValueError("msg_type must fit in a byte")
        if not 0 <= self.flags <= 0xFFFF:
            raise ValueError("flags must fit in 16 bits")
        if not isinstance(self.msg_id, bytes) or len(self.msg_id) != MSG_ID_LEN:
            raise ValueError("msg_id must be 16 bytes")
        if not 0 <= self.sent_at_ms < 1 << 64 or not 0 <= self.seq < 1 << 64:
            raise ValueError("sent_at_ms and seq must fit in 64 bits")

    @property
    def duress(self) -> bool:
        return bool(self.flags & Flags.DURESS)

    @property
    def liveness(self) -> bool:
        return bool(self.flags & Flags.LIVENESS)

    @property
    def quarantine(self) -> bool:
        return bool(self.flags & Flags.QUARANTINE)


def encode_inner(header: InnerHeader, body: bytes, padded_len: int) -> bytes:
    """Header, length-prefixed body, zeros up to ``padded_len`` (the bucket)."""
    if not isinstance(body, bytes):
        raise TypeError("body must be bytes")
    used = INNER_HEADER_LEN + BODY_LEN_PREFIX + len(body)
    if len(body) > 0xFFFF or used > padded_len:
        raise LocalProtocolError(f"body of {len(body)} bytes does not fit in {padded_len}")
    head = _INNER.pack(
        INNER_VERSION, header.msg_type, header.flags, header.msg_id, header.sent_at_ms, header.seq
    )
    return head + u16(len(body)) + body + bytes(padded_len - used)


def decode_inner(plaintext: bytes) -> tuple[InnerHeader, bytes]:
    """Parse a decrypted plaintext. The peer is authenticated but still held to the format."""
    r = Reader(plaintext, EnvelopeError)
    version, msg_type, flags, msg_id, sent_at, seq = _INNER.unpack(
        r.take(INNER_HEADER_LEN, "inner header")
    )
    if version != INNER_VERSION:
        raise EnvelopeError(f"inner version {version} not spoken")
    body = r.take(r.u16("body length"), "body")
    if not _is_zero(r.rest()):
        raise EnvelopeError("inner padding is not zero")
    return InnerHeader(msg_type, flags, msg_id, sent_at, seq), body


# --------------------------------------------------------------------------- padding policy


@functools.lru_cache(maxsize=64)
def plaintext_capacity(block_size: int) -> int:
    """Largest inner plaintext that fits one block in the worst case (pre-key, u64 index)."""
    check_block_size(block_size)
    return max_olm_plaintext(block_size - ENVELOPE_HEADER_LEN - KEY_LEN)


def body_capacity(block_size: int) -> int:
    """Largest body one message can carry on a relay with this block size."""
    return plaintext_capacity(block_size) - INNER_HEADER_LEN - BODY_LEN_PREFIX


@dataclass(frozen=True, slots=True)
class Padding:
    """Which inner plaintext sizes a sender may produce ("buckets"), ascending.

    The default (:meth:`for_block` with no extra buckets) is a single bucket that fills the
    block: the Olm length on the relay then says nothing about the body. Smaller buckets save
    CPU on large blocks at the price of telling a relay which bucket a message fell in.
    """

    buckets: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError("buckets must be a non-empty strictly ascending tuple")
        if self.buckets[0] < INNER_HEADER_LEN + BODY_LEN_PREFIX:
            raise ValueError("a bucket must hold at least the inner header")

    @classmethod
    def for_block(cls, block_size: int, smaller: tuple[int, ...] = ()) -> Padding:
        top = plaintext_capacity(block_size)
        return cls((*sorted(b for b in set(smaller) if b < top), top))

    @property
    def max_body(self) -> int:
        return self.buckets[-1] - INNER_HEADER_LEN - BODY_LEN_PREFIX

    def size_for(self, body_len: int) -> int:
        need = INNER_HEADER_LEN + BODY_LEN_PREFIX + body_len
        for bucket in self.buckets:
            if need <= bucket:
                return bucket
        raise LocalProtocolError(
            f"body of {body_len} bytes exceeds the {self.max_body}-byte maximum: split it"
        )
