"""The relay wire protocol: frames, their binary codec, and the bytes a queue key signs.

Theory of operation
-------------------
A relay keeps *unidirectional queues*. Creating a queue yields two unrelated random ids: the
recipient id (known only to the queue's owner) and the sender id (handed to one contact inside
an invitation). Nothing on the relay links the two ids to each other except the queue record,
and nothing links a queue to a person.

Every WebSocket binary message carries exactly one frame. Every frame starts with the same
6-byte header::

    version u8 | type u8 | corr_id u32 (big-endian)

``corr_id`` is chosen by the client and echoed in the reply, so commands can be pipelined and
answered out of order. Frames the relay pushes unasked (``MSG``, ``END``, ``HELLO``) carry
``corr_id`` 0.

Message bodies have one fixed size per relay (``block_size``, announced in ``HELLO``): a
``SEND`` whose body is not exactly ``block_size`` bytes is refused. Clients pad inside their
encryption, so every stored message on a relay is the same size and sizes reveal nothing.

Authentication (see docs/protocol/relay.md for the reasoning): at connect the relay sends a
random 32-byte ``challenge``. Commands that need a queue key carry an Ed25519 signature over
:func:`auth_payload` (domain label, version, command type, challenge, entity id, extra), so a
signature is bound to one connection and one command and cannot be replayed elsewhere. The
relay checks a signature once per subscription (``SUB``), once per sender per connection
(``SAUTH``), and on the rare ``KEY`` and ``DEL``; ``ACK`` rides on the subscription and ``SEND``
on the sender's proof for this connection.

This module is pure: it parses and produces ``bytes``. It never touches sockets, clocks or
randomness; callers pass everything in. Parsing untrusted input raises only
:class:`FrameError`, which carries the error code to answer with and, when it could be read,
the ``corr_id`` of the offending frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from kith.errors import RemoteProtocolError

#: The protocol versions this code speaks. Every frame carries one.
VERSION: Final = 1
MIN_VERSION: Final = 1
MAX_VERSION: Final = 1

ID_LEN: Final = 16
KEY_LEN: Final = 32
SIG_LEN: Final = 64
CHALLENGE_LEN: Final = 32
MSG_ID_LEN: Final = 16

#: Default fixed message body size. A text message with its Olm envelope fits; larger payloads
#: are split by the client. All messages on one relay have the same size.
DEFAULT_BLOCK_SIZE: Final = 4096
MIN_BLOCK_SIZE: Final = 256
MAX_BLOCK_SIZE: Final = 65536

_HEADER = struct.Struct(">BBI")
HEADER_LEN: Final = _HEADER.size  # 6

_AUTH_LABEL: Final = b"kith-relay-auth\x00"


class FrameType(enum.IntEnum):
    """Frame type codes. Client commands are below 0x80, relay frames at or above."""

    PING = 0x01
    NEW = 0x02
    SUB = 0x03
    KEY = 0x04
    SAUTH = 0x05
    SEND = 0x06
    ACK = 0x07
    DEL = 0x08
    QACK = 0x09

    OK = 0x80
    PONG = 0x81
    IDS = 0x82
    MSG = 0x83
    END = 0x84
    HELLO = 0x85
    ERR = 0x8F


class ErrorCode(enum.IntEnum):
    """Codes carried by ``ERR`` frames. Stable on the wire: never renumber."""

    MALFORMED = 1  #: the frame could not be parsed (truncated, bad length, trailing bytes)
    VERSION = 2  #: the frame's version is not one this relay speaks
    TOO_LARGE = 3  #: the frame exceeds the maximum frame size
    UNKNOWN_COMMAND = 4  #: the frame type is not a client command
    AUTH = 5  #: no such queue, or the proof was missing or wrong (deliberately one code)
    QUOTA = 6  #: the queue is full (messages or bytes)
    RATE_LIMITED = 7  #: this connection sends commands too fast; the command was not run
    NO_MESSAGE = 8  #: ACK names a message that is not delivered on this subscription
    BLOCK_SIZE = 9  #: SEND body is not exactly the relay's block size
    STORE_UNAVAILABLE = 10  #: storage is down; nothing was stored, nothing acknowledged
    INTERNAL = 11  #: an unexpected fault in the relay; the command had no effect


class FrameError(RemoteProtocolError):
    """Untrusted bytes did not form a valid frame.

    ``code`` is what the relay answers with; ``corr_id`` is the offending frame's id when the
    header could be read (else 0).
    """

    def __init__(self, code: ErrorCode, detail: str, corr_id: int = 0) -> None:
        super().__init__(f"{code.name.lower()}: {detail}")
        self.code = code
        self.corr_id = corr_id
        self.detail = detail


# --------------------------------------------------------------------------- client commands


# The frames, effects and records built for every message are plain (not frozen) slotted
# dataclasses: a frozen one costs about 0.6 us more to build (measured), several are built
# per message, and nothing mutates them once built.
@dataclass(slots=True)
class Ping:
    corr_id: int


@dataclass(slots=True)
class New:
    """Create a queue owned by ``recipient_key`` (Ed25519 public key)."""

    corr_id: int
    recipient_key: bytes


@dataclass(slots=True)
class Sub:
    """Subscribe to a queue; ``signature`` by the recipient key over the auth payload."""

    corr_id: int
    recipient_id: bytes
    signature: bytes


@dataclass(slots=True)
class Key:
    """Secure a queue: from now on senders must prove ``sender_key``."""

    corr_id: int
    recipient_id: bytes
    sender_key: bytes
    signature: bytes


@dataclass(slots=True)
class SAuth:
    """Prove the sender key of a secured queue, once per connection."""

    corr_id: int
    sender_id: bytes
    signature: bytes


@dataclass(slots=True)
class Send:
    corr_id: int
    sender_id: bytes
    body: bytes


@dataclass(slots=True)
class Ack:
    """Acknowledge (and so delete) a message delivered on this connection's subscription.

    ``quiet`` (frame type ``QACK``): the relay answers only if the ACK fails (``ERR``), not
    with ``OK`` when it succeeds. A client that goes on receiving has no use for the OK (a
    failed ACK only means the message comes again, and clients drop duplicates), and a reply
    per message is a fifth of the relay's frames."""

    corr_id: int
    recipient_id: bytes
    msg_id: bytes
    quiet: bool = False


@dataclass(slots=True)
class Del:
    """Delete a queue and every message in it."""

    corr_id: int
    recipient_id: bytes
    signature: bytes


Command = Ping | New | Sub | Key | SAuth | Send | Ack | Del

# --------------------------------------------------------------------------- relay frames


@dataclass(slots=True)
class Hello:
    min_version: int
    max_version: int
    challenge: bytes
    block_size: int
    window: int


@dataclass(slots=True)
class Ok:
    corr_id: int


@dataclass(slots=True)
class Pong:
    corr_id: int


@dataclass(slots=True)
class Ids:
    corr_id: int
    recipient_id: bytes
    sender_id: bytes


@dataclass(slots=True)
class Msg:
    """A pushed message. ``received_at`` is coarse (whole minutes, Unix seconds)."""

    recipient_id: bytes
    msg_id: bytes
    received_at: int
    body: bytes


@dataclass(slots=True)
class End:
    """Another connection took over the subscription to ``recipient_id``."""

    recipient_id: bytes


@dataclass(slots=True)
class Err:
    corr_id: int
    code: ErrorCode


Reply = Hello | Ok | Pong | Ids | Msg | End | Err

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HELLO = struct.Struct(">BB32sIH")

# Plain ints for the hot paths (comparing with an IntEnum member costs an attribute lookup).
_OK: Final = int(FrameType.OK)
_SEND: Final = int(FrameType.SEND)
_ACK: Final = int(FrameType.ACK)
_QACK: Final = int(FrameType.QACK)
_MSG_HEADER: Final = _HEADER.pack(VERSION, int(FrameType.MSG), 0)


def max_frame_size(block_size: int) -> int:
    """Largest valid frame for a relay with ``block_size`` (a MSG push)."""
    return HEADER_LEN + ID_LEN + MSG_ID_LEN + _U64.size + block_size


def auth_payload(
    frame_type: FrameType, challenge: bytes, entity_id: bytes, extra: bytes = b""
) -> bytes:
    """The exact bytes a queue key signs to authorise ``frame_type`` on one connection.

    Domain-separated by a label and the protocol version, bound to the connection's
    challenge, the command type and the entity it acts on (and, for ``KEY``, the new sender
    key), so a captured signature is worthless on any other connection or command.
    """
    if len(challenge) != CHALLENGE_LEN or len(entity_id) != ID_LEN:
        raise ValueError("challenge or entity id has the wrong length")
    return _AUTH_LABEL + bytes((VERSION, int(frame_type))) + challenge + entity_id + extra


# --------------------------------------------------------------------------- encoding


def _header(frame_type: FrameType, corr_id: int) -> bytes:
    return _HEADER.pack(VERSION, int(frame_type), corr_id)


def _check(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")


def encode_ok(corr_id: int) -> bytes:
    """``encode(Ok(corr_id))``, without building the frame object (the relay's hot path)."""
    return _HEADER.pack(VERSION, _OK, corr_id)


def encode_msg(recipient_id: bytes, msg_id: bytes, received_at: int, body: bytes) -> bytes:
    """``encode(Msg(...))``, without building the frame object (the relay's hot path)."""
    _check("recipient_id", recipient_id, ID_LEN)
    _check("msg_id", msg_id, MSG_ID_LEN)
    return b"".join((_MSG_HEADER, recipient_id, msg_id, _U64.pack(received_at), body))


def encode(frame: Command | Reply) -> bytes:
    """Encode any frame. Wrong field sizes raise ValueError (a local bug, never a peer's)."""
    match frame:
        case Ping(corr_id):
            return _header(FrameType.PING, corr_id)
        case New(corr_id, recipient_key):
            _check("recipient_key", recipient_key, KEY_LEN)
            return _header(FrameType.NEW, corr_id) + recipient_key
        case Sub(corr_id, rid, sig):
            _check("recipient_id", rid, ID_LEN)
            _check("signature", sig, SIG_LEN)
            return _header(FrameType.SUB, corr_id) + rid + sig
        case Key(corr_id, rid, skey, sig):
            _check("recipient_id", rid, ID_LEN)
            _check("sender_key", skey, KEY_LEN)
            _check("signature", sig, SIG_LEN)
            return _header(FrameType.KEY, corr_id) + rid + skey + sig
        case SAuth(corr_id, sid, sig):
            _check("sender_id", sid, ID_LEN)
            _check("signature", sig, SIG_LEN)
            return _header(FrameType.SAUTH, corr_id) + sid + sig
        case Send(corr_id, sid, body):
            _check("sender_id", sid, ID_LEN)
            return _header(FrameType.SEND, corr_id) + sid + body
        case Ack(corr_id, rid, msg_id, quiet):
            _check("recipient_id", rid, ID_LEN)
            _check("msg_id", msg_id, MSG_ID_LEN)
            return _header(FrameType.QACK if quiet else FrameType.ACK, corr_id) + rid + msg_id
        case Del(corr_id, rid, sig):
            _check("recipient_id", rid, ID_LEN)
            _check("signature", sig, SIG_LEN)
            return _header(FrameType.DEL, corr_id) + rid + sig
        case Hello(lo, hi, challenge, block_size, window):
            _check("challenge", challenge, CHALLENGE_LEN)
            return _header(FrameType.HELLO, 0) + _HELLO.pack(lo, hi, challenge, block_size, window)
        case Ok(corr_id):
            return _header(FrameType.OK, corr_id)
        case Pong(corr_id):
            return _header(FrameType.PONG, corr_id)
        case Ids(corr_id, rid, sid):
            _check("recipient_id", rid, ID_LEN)
            _check("sender_id", sid, ID_LEN)
            return _header(FrameType.IDS, corr_id) + rid + sid
        case Msg(rid, msg_id, received_at, body):
            _check("recipient_id", rid, ID_LEN)
            _check("msg_id", msg_id, MSG_ID_LEN)
            return _header(FrameType.MSG, 0) + rid + msg_id + _U64.pack(received_at) + body
        case End(rid):
            _check("recipient_id", rid, ID_LEN)
            return _header(FrameType.END, 0) + rid
        case Err(corr_id, code):
            return _header(FrameType.ERR, corr_id) + _U16.pack(int(code))
    raise TypeError(f"not a frame: {type(frame).__name__}")


# --------------------------------------------------------------------------- decoding


def _read_header(data: bytes, max_size: int) -> tuple[int, int, bytes]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(ErrorCode.MALFORMED, "frame is not binary")
    if len(data) > max_size:
        corr = _U32.unpack_from(data, 2)[0] if len(data) >= HEADER_LEN else 0
        raise FrameError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes", corr)
    if len(data) < HEADER_LEN:
        raise FrameError(ErrorCode.MALFORMED, "frame shorter than its header")
    version, ftype, corr_id = _HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise FrameError(ErrorCode.VERSION, f"version {version} not spoken", corr_id)
    return ftype, corr_id, bytes(data[HEADER_LEN:])


def _expect_len(body: bytes, length: int, what: str, corr_id: int) -> None:
    if len(body) != length:
        raise FrameError(
            ErrorCode.MALFORMED, f"{what} body is {len(body)} bytes, expected {length}", corr_id
        )


def decode_command(data: bytes, block_size: int) -> Command:
    """Parse one client frame. Raises :class:`FrameError` (never anything else) on bad input.

    A ``SEND`` whose body length differs from ``block_size`` raises ``BLOCK_SIZE``.
    """
    ftype, corr, body = _read_header(data, HEADER_LEN + ID_LEN + block_size)
    # SEND and ACK first: they are nearly all the traffic.
    if ftype == _SEND:
        if len(body) < ID_LEN:
            raise FrameError(ErrorCode.MALFORMED, "SEND shorter than a sender id", corr)
        if len(body) - ID_LEN != block_size:
            raise FrameError(
                ErrorCode.BLOCK_SIZE,
                f"SEND body is {len(body) - ID_LEN} bytes, block size is {block_size}",
                corr,
            )
        return Send(corr, body[:ID_LEN], body[ID_LEN:])
    if ftype in (_ACK, _QACK):
        _expect_len(body, ID_LEN + MSG_ID_LEN, "ACK", corr)
        return Ack(corr, body[:ID_LEN], body[ID_LEN:], ftype == _QACK)
    if ftype == FrameType.PING:
        _expect_len(body, 0, "PING", corr)
        return Ping(corr)
    if ftype == FrameType.NEW:
        _expect_len(body, KEY_LEN, "NEW", corr)
        return New(corr, body)
    if ftype == FrameType.SUB:
        _expect_len(body, ID_LEN + SIG_LEN, "SUB", corr)
        return Sub(corr, body[:ID_LEN], body[ID_LEN:])
    if ftype == FrameType.KEY:
        _expect_len(body, ID_LEN + KEY_LEN + SIG_LEN, "KEY", corr)
        return Key(corr, body[:ID_LEN], body[ID_LEN : ID_LEN + KEY_LEN], body[ID_LEN + KEY_LEN :])
    if ftype == FrameType.SAUTH:
        _expect_len(body, ID_LEN + SIG_LEN, "SAUTH", corr)
        return SAuth(corr, body[:ID_LEN], body[ID_LEN:])
    if ftype == FrameType.DEL:
        _expect_len(body, ID_LEN + SIG_LEN, "DEL", corr)
        return Del(corr, body[:ID_LEN], body[ID_LEN:])
    raise FrameError(ErrorCode.UNKNOWN_COMMAND, f"type 0x{ftype:02x} is not a command", corr)


def decode_reply(data: bytes, block_size: int | None = None) -> Reply:
    """Parse one relay frame on the client side. Raises :class:`FrameError` on bad input.

    ``block_size`` is None only before ``HELLO`` has been read; then only ``HELLO`` (or an
    ``ERR``) is accepted.
    """
    limit = max_frame_size(block_size if block_size is not None else MAX_BLOCK_SIZE)
    ftype, corr, body = _read_header(data, limit)
    if ftype == FrameType.HELLO:
        _expect_len(body, _HELLO.size, "HELLO", corr)
        lo, hi, challenge, bsize, window = _HELLO.unpack(body)
        if not MIN_BLOCK_SIZE <= bsize <= MAX_BLOCK_SIZE or window < 1 or lo > hi:
            raise FrameError(ErrorCode.MALFORMED, "HELLO parameters out of range", corr)
        return Hello(lo, hi, challenge, bsize, window)
    if ftype == FrameType.ERR:
        _expect_len(body, _U16.size, "ERR", corr)
        raw = _U16.unpack(body)[0]
        try:
            code = ErrorCode(raw)
        except ValueError:
            raise FrameError(ErrorCode.MALFORMED, f"unknown error code {raw}", corr) from None
        return Err(corr, code)
    if block_size is None:
        raise FrameError(ErrorCode.MALFORMED, "frame before HELLO", corr)
    if ftype == FrameType.OK:
        _expect_len(body, 0, "OK", corr)
        return Ok(corr)
    if ftype == FrameType.PONG:
        _expect_len(body, 0, "PONG", corr)
        return Pong(corr)
    if ftype == FrameType.IDS:
        _expect_len(body, 2 * ID_LEN, "IDS", corr)
        return Ids(corr, body[:ID_LEN], body[ID_LEN:])
    if ftype == FrameType.MSG:
        _expect_len(body, ID_LEN + MSG_ID_LEN + _U64.size + block_size, "MSG", corr)
        off = ID_LEN + MSG_ID_LEN
        (received_at,) = _U64.unpack_from(body, off)
        return Msg(body[:ID_LEN], body[ID_LEN:off], received_at, body[off + _U64.size :])
    if ftype == FrameType.END:
        _expect_len(body, ID_LEN, "END", corr)
        return End(body)
    raise FrameError(ErrorCode.MALFORMED, f"type 0x{ftype:02x} is not a relay frame", corr)
