"""Pairwise secure channels: the invitation handshake and the channel that follows, sans-I/O.

Theory of operation
-------------------
Two people who have never talked share nothing but an :class:`~kith.protocol.invitation.
Invitation`. Each relationship gets its own Olm account on both sides (fresh identity keys),
and each side receives on its own relay queue ("inbox"); the other side holds only that
queue's sender id and a sender key for it.

::

    inviter (A)                                         acceptor (B)
    creates inbox Q_A, Account_A, one-time key
    create_invitation() ------ link / QR ------------>  accept_invitation():
                                                        creates inbox Q_B, Account_B,
                                                        Olm outbound session (signed OTK),
                             <------ block on Q_A ----  ACCEPT (pre-key): B's keys, Q_B,
                                                        B's sender key for Q_A, signature
    PendingInvitation.receive():
      unused? unexpired? inbound session
      (consumes the one-time key), checks,
      marks the invitation used
      effects: KEY Q_A with B's sender key,  ---------> CONFIRM: A's sender key for Q_B
                                                        Channel.receive() -> Confirmed:
                                                        effect: KEY Q_B with A's key

Both sides then hold a :class:`Channel`: an Olm session, their own inbox, and the peer's queue.
Nothing here touches a socket, a clock or the OS random source: callers pass ``now_ms``, an
``rng`` (``Callable[[int], bytes]``) and the crypto implementation
(:data:`kith.crypto.olm.CRYPTO`); the state machines return what to send where
(:class:`SendBlock`) and which queue to secure (:class:`SecureInbox`), and the client service
does the I/O. Message formats are in :mod:`kith.protocol.envelope`.

Delivery receipts: the recipient's client, once it has stored messages, names their message
ids in a RECEIPT (:meth:`Channel.send_receipt`); the sender's channel returns
:class:`Delivered`. The channel does not track which ids it sent (the client's outbox does), so
ids it does not know are passed on, not refused. Receipts are never receipted.

Queue rotation: a contact's inbox moves to another queue (on the same or another relay)
without losing a message, inside the channel::

    A (moves its inbox Q1 -> Q2)                         B (sends to A)
    creates Q2 with NEW (not yet secured)
    move_inbox(Q2): MOVE(generation, R2, sid2, block)  ---- on B's inbox ---->
                                                       receive() -> PeerMoved:
                                                       new sender key k2 for Q2;
                                                       everything from now on goes to Q2
                      <---- on Q2: MOVE_ACK(generation, sid2, k2)  (first block on Q2)
    receive() -> InboxMoved: KEY Q2 with k2, drain Q1 (all of B's earlier messages are
    there, B sends nothing more to it), delete Q1, finish_move()

One channel throughout: Olm session, sequence numbers and replay window carry on unchanged,
so ordering and exactly-once hold across the move, and a late block from Q1 is still
accepted. A move changes where ciphertext is delivered, never a key.

Transactions: every input that could be bad is processed on copies (Olm session or account,
replay window, flags) and the object is changed only if everything passed. A typed error
therefore always means "nothing happened", and the conversation continues.

Persistence: :meth:`Channel.to_bytes` and :meth:`PendingInvitation.to_bytes` seal the whole
state under a 32-byte key from the vault; the client must save after every send and receive
(the ratchet has moved) and before releasing the block or acknowledging the relay message.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from kith.crypto.interfaces import (
    KEY_LEN,
    PICKLE_KEY_LEN,
    SIGNATURE_LEN,
    IdentityKeys,
    OlmAccount,
    OlmKind,
    OlmSession,
    PairwiseCrypto,
)
from kith.errors import DecryptError, KithError, LocalProtocolError, RemoteProtocolError
from kith.protocol._reader import Reader, check_address, str8, u16, u32, u64
from kith.protocol.envelope import (
    FIRST_APPLICATION_TYPE,
    KNOWN_FLAGS,
    MSG_ID_LEN,
    Envelope,
    InnerHeader,
    MessageType,
    Padding,
    check_block_size,
    decode_envelope,
    decode_inner,
    encode_envelope,
    encode_inner,
)
from kith.protocol.invitation import (
    DEFAULT_TTL_MS,
    ID_LEN,
    MAX_TTL_MS,
    QUEUE_ID_LEN,
    Invitation,
    InvitationError,
    InvitationUsed,
)
from kith.protocol.replay import SeqWindow, WindowDecodeError

RandomBytes = Callable[[int], bytes]

#: Version of a sealed channel state. 2 added queue moves, 3 the number of the inviter's last
#: handshake confirmation; version 1 and 2 states still load.
CHANNEL_STATE_VERSION: Final = 3
#: Version of a sealed pending invitation.
PENDING_STATE_VERSION: Final = 1
SEED_LEN: Final = 32
#: Most sequence numbers one resend request names.
MAX_RESEND: Final = 256
#: Most message ids one receipt names (fewer if the peer's block is small: see
#: :attr:`Channel.receipt_capacity`).
MAX_RECEIPT: Final = 256
#: Moves are numbered per direction from 1; the number is a u32 on the wire.
MAX_MOVES: Final = 0xFFFF_FFFF

_ACCEPT_LABEL: Final = b"kith-accept-v1\x00"
_CHANNEL_LABEL: Final = b"kith-pairwise-channel"
_PENDING_LABEL: Final = b"kith-pending-invitation"
_OLM_PICKLE_LABEL: Final = b"kith-olm-pickle"


class HandshakeError(RemoteProtocolError):
    """The peer's handshake or control message is malformed or does not fit this channel."""


class StateError(KithError):
    """A sealed state blob opened but its contents are malformed (corrupted local state)."""


# --------------------------------------------------------------------------- queues and effects


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


@dataclass(frozen=True, slots=True)
class InboxQueue:
    """A queue this side receives on: created with NEW, ``auth_seed`` is its recipient key."""

    relay: str
    recipient_id: bytes
    sender_id: bytes
    block_size: int
    auth_seed: bytes

    def __post_init__(self) -> None:
        check_address(self.relay)
        _check_bytes("recipient_id", self.recipient_id, QUEUE_ID_LEN)
        _check_bytes("sender_id", self.sender_id, QUEUE_ID_LEN)
        _check_bytes("auth_seed", self.auth_seed, SEED_LEN)
        check_block_size(self.block_size)

    def __repr__(self) -> str:
        return f"InboxQueue(relay={self.relay!r}, recipient_id={self.recipient_id.hex()}, ...)"


@dataclass(frozen=True, slots=True)
class PeerQueue:
    """The peer's inbox as this side sees it: send there, proving ``auth_seed``'s key."""

    relay: str
    sender_id: bytes
    block_size: int
    auth_seed: bytes

    def __post_init__(self) -> None:
        check_address(self.relay)
        _check_bytes("sender_id", self.sender_id, QUEUE_ID_LEN)
        _check_bytes("auth_seed", self.auth_seed, SEED_LEN)
        check_block_size(self.block_size)

    def __repr__(self) -> str:
        return f"PeerQueue(relay={self.relay!r}, sender_id={self.sender_id.hex()}, ...)"


@dataclass(frozen=True, slots=True)
class SendBlock:
    """Effect: SEND ``block`` to ``queue`` (after SAUTH with ``queue.auth_seed``).

    ``header`` is what was encrypted, for the client's outbox (resends reuse ``msg_id``).
    """

    queue: PeerQueue
    block: bytes
    header: InnerHeader


@dataclass(frozen=True, slots=True)
class SecureInbox:
    """Effect: KEY the inbox ``recipient_id`` with ``sender_key``, so only the peer can send."""

    recipient_id: bytes
    sender_key: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """Event: an application message from the peer."""

    header: InnerHeader
    body: bytes


@dataclass(frozen=True, slots=True)
class Confirmed:
    """Event (acceptor only, once): the inviter answered; secure the inbox as told."""

    secure: SecureInbox


@dataclass(frozen=True, slots=True)
class ResendRequested:
    """Event: the peer lost these of our messages (by ``seq``); send their content again with
    the original ``msg_id``. For the inviter, a number for which
    :meth:`Channel.carried_confirmation` is true named the handshake confirmation: answer it
    (once per request) with :meth:`Channel.resend_confirmation`. A number that named a RECEIPT
    is answered by a new receipt for the same ids (or not at all), one that named a MOVE still
    pending by :meth:`Channel.resend_move`, other control messages not at all."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Delivered:
    """Event: the peer stored the messages with these message ids (as the peer claims).

    Ids are passed on as received, including ones this side never sent or already saw
    acknowledged: the client's outbox matches them and ignores the rest. A receipt needs no
    answer (receipts are not receipted)."""

    msg_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PeerMoved:
    """Event: the peer moved its inbox. Everything this channel sends from now on goes to the
    new queue (``send.queue``); send ``send`` (the MOVE_ACK, which carries the key that will
    secure the new queue) there, but only once every block this channel produced earlier has
    been accepted by its relay: the peer deletes the old queue when the MOVE_ACK arrives.

    A repeated MOVE (the peer did not hear our answer) yields this event again, with an
    acknowledgement for the same queue and key: sending it again is always safe."""

    send: SendBlock


@dataclass(frozen=True, slots=True)
class InboxMoved:
    """Event: the peer acknowledged our move. ``secure`` KEYs the new inbox (now
    :attr:`Channel.inbox`); then drain ``retired`` (the peer's messages sent before the move
    are there, and nothing after it), delete it on its relay, and call
    :meth:`Channel.finish_move`. Until then :attr:`Channel.retiring_inbox` keeps it, so a
    crash in between loses nothing."""

    secure: SecureInbox
    retired: InboxQueue


@dataclass(frozen=True, slots=True)
class Ignored:
    """Event: a repeated or stale control message the channel had already acted on (a move
    acknowledgement that arrived twice, a MOVE older than the peer's last, a second handshake
    confirmation). Nothing to do except saving the channel: its replay window moved."""

    header: InnerHeader


Event = Received | Confirmed | ResendRequested | Delivered | PeerMoved | InboxMoved | Ignored


# --------------------------------------------------------------------------- handshake payloads


@dataclass(frozen=True, slots=True)
class AcceptPayload:
    """Body of HANDSHAKE_ACCEPT (acceptor to inviter, inside the first pre-key message)."""

    invitation_id: bytes
    identity: IdentityKeys
    reply_relay: str
    reply_sender_id: bytes
    reply_block_size: int
    sender_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_address(self.reply_relay)
        _check_bytes("invitation_id", self.invitation_id, ID_LEN)
        _check_bytes("reply_sender_id", self.reply_sender_id, QUEUE_ID_LEN)
        _check_bytes("sender_key", self.sender_key, KEY_LEN)
        _check_bytes("signature", self.signature, SIGNATURE_LEN)
        check_block_size(self.reply_block_size)

    def signed_part(self) -> bytes:
        return (
            self.invitation_id
            + self.identity.to_bytes()
            + str8(self.reply_relay)
            + self.reply_sender_id
            + u32(self.reply_block_size)
            + self.sender_key
        )

    def to_bytes(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> AcceptPayload:
        r = Reader(data, HandshakeError)
        invitation_id = r.take(ID_LEN, "invitation id")
        identity = IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "identity"))
        relay = r.address("reply relay")
        sender_id = r.take(QUEUE_ID_LEN, "reply sender id")
        block_size = r.u32("reply block size")
        sender_key = r.take(KEY_LEN, "sender key")
        signature = r.take(SIGNATURE_LEN, "signature")
        r.end("accept payload")
        try:
            return cls(invitation_id, identity, relay, sender_id, block_size, sender_key, signature)
        except LocalProtocolError as exc:  # block size out of range
            raise HandshakeError(str(exc)) from None


def accept_signing_payload(invitation: Invitation, signed_part: bytes) -> bytes:
    """What the acceptor's new identity signs: bound to this exact invitation, so the signature
    proves possession of the Ed25519 key and ties it to the Curve25519 key for this contact."""
    return _ACCEPT_LABEL + invitation.to_bytes() + signed_part


@dataclass(frozen=True, slots=True)
class ConfirmPayload:
    """Body of HANDSHAKE_CONFIRM (inviter to acceptor, first message on the acceptor's inbox)."""

    invitation_id: bytes
    sender_key: bytes

    def __post_init__(self) -> None:
        _check_bytes("invitation_id", self.invitation_id, ID_LEN)
        _check_bytes("sender_key", self.sender_key, KEY_LEN)

    def to_bytes(self) -> bytes:
        return self.invitation_id + self.sender_key

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfirmPayload:
        r = Reader(data, HandshakeError)
        payload = cls(r.take(ID_LEN, "invitation id"), r.take(KEY_LEN, "sender key"))
        r.end("confirm payload")
        return payload


def encode_receipt(msg_ids: tuple[bytes, ...]) -> bytes:
    """RECEIPT body: ``count u16 | count x msg_id 16``, each id once."""
    if not 1 <= len(msg_ids) <= MAX_RECEIPT:
        raise ValueError(f"a receipt names 1..{MAX_RECEIPT} messages")
    for msg_id in msg_ids:
        _check_bytes("msg_id", msg_id, MSG_ID_LEN)
    if len(set(msg_ids)) != len(msg_ids):
        raise ValueError("a receipt names each message once")
    return u16(len(msg_ids)) + b"".join(msg_ids)


def decode_receipt(data: bytes) -> tuple[bytes, ...]:
    """Parse a RECEIPT body. The format is strict (one encoding per receipt): a count out of
    range, a repeated id or trailing bytes are the peer's error."""
    r = Reader(data, HandshakeError)
    count = r.u16("count")
    if not 1 <= count <= MAX_RECEIPT:
        raise HandshakeError(f"receipt names {count} messages")
    msg_ids = tuple(r.take(MSG_ID_LEN, "msg_id") for _ in range(count))
    r.end("receipt")
    if len(set(msg_ids)) != count:
        raise HandshakeError("receipt names a message twice")
    return msg_ids


def _check_generation(generation: int) -> None:
    if not isinstance(generation, int) or not 1 <= generation <= MAX_MOVES:
        raise ValueError(f"move generation must be 1..{MAX_MOVES}")


@dataclass(frozen=True, slots=True)
class MovePayload:
    """Body of MOVE: the sender's inbox is now the queue ``sender_id`` on ``relay``.

    ``generation`` numbers the sender's moves from 1, so a repeated MOVE (same number) is
    answered again and a stale one (smaller) is ignored, whatever order a relay delivers in.
    Only the sender id travels: the recipient id and recipient key stay with the queue's
    owner."""

    generation: int
    relay: str
    sender_id: bytes
    block_size: int

    def __post_init__(self) -> None:
        _check_generation(self.generation)
        check_address(self.relay)
        _check_bytes("sender_id", self.sender_id, QUEUE_ID_LEN)
        check_block_size(self.block_size)

    def to_bytes(self) -> bytes:
        return u32(self.generation) + str8(self.relay) + self.sender_id + u32(self.block_size)

    @classmethod
    def from_bytes(cls, data: bytes) -> MovePayload:
        r = Reader(data, HandshakeError)
        generation = r.u32("generation")
        relay = r.address("relay")
        sender_id = r.take(QUEUE_ID_LEN, "sender id")
        block_size = r.u32("block size")
        r.end("move")
        try:
            return cls(generation, relay, sender_id, block_size)
        except (LocalProtocolError, ValueError) as exc:  # generation 0, block size out of range
            raise HandshakeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class MoveAckPayload:
    """Body of MOVE_ACK: the answer to MOVE number ``generation`` for queue ``sender_id``;
    ``sender_key`` is the Ed25519 key the answering side will prove when sending there."""

    generation: int
    sender_id: bytes
    sender_key: bytes

    def __post_init__(self) -> None:
        _check_generation(self.generation)
        _check_bytes("sender_id", self.sender_id, QUEUE_ID_LEN)
        _check_bytes("sender_key", self.sender_key, KEY_LEN)

    def to_bytes(self) -> bytes:
        return u32(self.generation) + self.sender_id + self.sender_key

    @classmethod
    def from_bytes(cls, data: bytes) -> MoveAckPayload:
        r = Reader(data, HandshakeError)
        generation = r.u32("generation")
        sender_id = r.take(QUEUE_ID_LEN, "sender id")
        sender_key = r.take(KEY_LEN, "sender key")
        r.end("move acknowledgement")
        try:
            return cls(generation, sender_id, sender_key)
        except ValueError as exc:  # generation 0
            raise HandshakeError(str(exc)) from None


def encode_resend_request(seqs: tuple[int, ...]) -> bytes:
    if not 1 <= len(seqs) <= MAX_RESEND:
        raise ValueError(f"a resend request names 1..{MAX_RESEND} messages")
    return u16(len(seqs)) + b"".join(u64(s) for s in seqs)


def decode_resend_request(data: bytes) -> tuple[int, ...]:
    r = Reader(data, HandshakeError)
    count = r.u16("count")
    if not 1 <= count <= MAX_RESEND:
        raise HandshakeError(f"resend request names {count} messages")
    seqs = tuple(r.u64("seq") for _ in range(count))
    r.end("resend request")
    return seqs


# --------------------------------------------------------------------------- the channel


class _Role(enum.IntFlag):
    ACCEPTOR = 1
    CONFIRMED = 2
    HAS_INBOX_KEY = 4
    MOVING = 8  #: a move of our inbox waits for its acknowledgement (state version 2)
    RETIRING = 16  #: an old inbox still has to be drained and deleted (state version 2)


_V1_ROLES: Final = _Role.ACCEPTOR | _Role.CONFIRMED | _Role.HAS_INBOX_KEY
_ALL_ROLES: Final = _V1_ROLES | _Role.MOVING | _Role.RETIRING


class Channel:
    """One secure channel with one contact. Not thread-safe; one owner at a time.

    Create one with :func:`accept_invitation` or :meth:`PendingInvitation.receive`, restore one
    with :meth:`from_bytes`. Every method that can fail on bad input leaves the channel as it
    was.
    """

    __slots__ = (
        "_acceptor",
        "_account",
        "_confirm_seq",
        "_confirmed",
        "_crypto",
        "_inbox",
        "_inbox_sender_key",
        "_invitation_id",
        "_moves",
        "_next_seq",
        "_our_keys",
        "_outbox",
        "_padding",
        "_peer_moves",
        "_pending_inbox",
        "_retiring_inbox",
        "_session",
        "_their_keys",
        "_window",
    )

    def __init__(
        self,
        *,
        crypto: PairwiseCrypto,
        account: OlmAccount,
        session: OlmSession,
        their_keys: IdentityKeys,
        invitation_id: bytes,
        inbox: InboxQueue,
        outbox: PeerQueue,
        acceptor: bool,
        confirmed: bool,
        next_seq: int = 0,
        window: SeqWindow | None = None,
        inbox_sender_key: bytes | None = None,
        moves: int = 0,
        peer_moves: int = 0,
        pending_inbox: InboxQueue | None = None,
        retiring_inbox: InboxQueue | None = None,
        confirm_seq: int = 0,
    ) -> None:
        self._crypto = crypto
        self._account = account
        self._session = session
        self._our_keys = account.identity_keys
        self._their_keys = their_keys
        self._invitation_id = invitation_id
        self._inbox = inbox
        self._outbox = outbox
        self._acceptor = acceptor
        self._confirmed = confirmed
        self._next_seq = next_seq
        self._window = window if window is not None else SeqWindow()
        self._inbox_sender_key = inbox_sender_key
        self._padding = Padding.for_block(outbox.block_size)
        self._moves = moves  # moves of our inbox started (the last one's generation)
        self._peer_moves = peer_moves  # the peer's moves applied (the last one's generation)
        self._pending_inbox = pending_inbox
        self._retiring_inbox = retiring_inbox
        # The inviter's last handshake confirmation went out under this number (0 until one
        # is made again): the acceptor may lose it too and ask for it by number.
        self._confirm_seq = confirm_seq

    # ----------------------------------------------------------------- properties

    @property
    def our_keys(self) -> IdentityKeys:
        return self._our_keys

    @property
    def their_keys(self) -> IdentityKeys:
        return self._their_keys

    @property
    def inbox(self) -> InboxQueue:
        return self._inbox

    @property
    def outbox(self) -> PeerQueue:
        return self._outbox

    @property
    def invitation_id(self) -> bytes:
        return self._invitation_id

    @property
    def confirmed(self) -> bool:
        """True once both sides know the handshake completed (always true for the inviter)."""
        return self._confirmed

    @property
    def inbox_sender_key(self) -> bytes | None:
        """The key the peer proves when sending to our inbox (to KEY the queue again)."""
        return self._inbox_sender_key

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def pending_inbox(self) -> InboxQueue | None:
        """The queue our inbox is moving to, while the peer has not acknowledged the move.

        Subscribe to it as soon as :meth:`move_inbox` returns: the acknowledgement and the
        peer's later messages arrive there."""
        return self._pending_inbox

    @property
    def retiring_inbox(self) -> InboxQueue | None:
        """Our previous inbox after a completed move, until :meth:`finish_move`: drain it and
        delete it on its relay (a client restarting mid-move finds it here)."""
        return self._retiring_inbox

    @property
    def padding(self) -> Padding:
        """Padding buckets for what this side sends. Not persisted: a client policy. The
        default fills the peer's block (see :class:`~kith.protocol.envelope.Padding`)."""
        return self._padding

    @padding.setter
    def padding(self, padding: Padding) -> None:
        if padding.buckets[-1] > Padding.for_block(self._outbox.block_size).buckets[-1]:
            raise LocalProtocolError("padding buckets exceed the peer's block size")
        self._padding = padding

    @property
    def max_body(self) -> int:
        return self._padding.max_body

    @property
    def receipt_capacity(self) -> int:
        """Most message ids one :meth:`send_receipt` can name with the current padding."""
        return min(MAX_RECEIPT, (self._padding.max_body - 2) // MSG_ID_LEN)

    # ----------------------------------------------------------------- sending

    def _seal(
        self,
        msg_type: int,
        flags: int,
        body: bytes,
        now_ms: int,
        rng: RandomBytes,
        msg_id: bytes | None = None,
    ) -> SendBlock:
        if msg_id is None:
            msg_id = rng(MSG_ID_LEN)
        header = InnerHeader(msg_type, flags, msg_id, now_ms, self._next_seq)
        plaintext = encode_inner(header, body, self._padding.size_for(len(body)))
        kind, ciphertext = self._session.encrypt(plaintext)
        sender_key = self._our_keys.curve25519 if kind is OlmKind.PREKEY else None
        block = encode_envelope(Envelope(kind, ciphertext, sender_key), self._outbox.block_size)
        self._next_seq += 1
        return SendBlock(self._outbox, block, header)

    def send(
        self,
        body: bytes,
        *,
        now_ms: int,
        rng: RandomBytes,
        msg_type: int = MessageType.TEXT,
        flags: int = 0,
        msg_id: bytes | None = None,
    ) -> SendBlock:
        """Encrypt an application message into one block for the peer's queue.

        ``msg_id`` is random unless given: a resend of a lost message passes the original id.
        ``flags`` may carry only the bits named in :class:`~kith.protocol.envelope.Flags`.
        """
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes")
        if not FIRST_APPLICATION_TYPE <= int(msg_type) <= 0xFF:
            raise LocalProtocolError(f"message type {msg_type} is reserved for the channel")
        if flags & ~KNOWN_FLAGS or flags < 0:
            raise LocalProtocolError(f"flags 0x{flags:04x} set reserved bits")
        if msg_id is not None:
            _check_bytes("msg_id", msg_id, MSG_ID_LEN)
        return self._seal(int(msg_type), flags, body, now_ms, rng, msg_id)

    def missing(self, limit: int = MAX_RESEND) -> tuple[int, ...]:
        """Sequence numbers of the peer's messages that have not arrived (oldest first).

        A number shows up here as soon as a later one arrived; the client should wait for the
        relay to finish delivering before asking for a resend.
        """
        return self._window.missing(limit)

    def request_resend(
        self, seqs: tuple[int, ...] | None = None, *, now_ms: int, rng: RandomBytes
    ) -> SendBlock:
        """Ask the peer to send again the messages numbered ``seqs`` (default: :meth:`missing`).

        The numbers are given up on here: if an original still arrives later it is refused as
        a replay, so the resent copy is the only one ever accepted.
        """
        capacity = min(MAX_RESEND, (self._padding.max_body - 2) // 8)
        wanted = self.missing(capacity) if seqs is None else tuple(seqs)
        if not wanted or len(wanted) > capacity:
            raise LocalProtocolError("nothing to request, or too many numbers for one message")
        if seqs is not None and not set(wanted) <= set(self._window.missing()):
            raise LocalProtocolError("only missing messages can be requested again")
        out = self._seal(MessageType.RESEND_REQUEST, 0, encode_resend_request(wanted), now_ms, rng)
        self._window = self._window.give_up(wanted)
        return out

    def send_receipt(
        self, msg_ids: tuple[bytes, ...], *, now_ms: int, rng: RandomBytes
    ) -> SendBlock:
        """Tell the peer we stored the messages ``msg_ids`` (their inner ``msg_id`` fields).

        At most :attr:`receipt_capacity` ids, each once; more must be split by the caller.
        Send a receipt only once the messages are saved (a receipt is a promise that the
        sender may stop resending), and only for application messages: control messages are
        not receipted, receipts included. If the peer asks for a receipt's ``seq`` again, send
        a new receipt for the same ids (receipts are idempotent) or none (the peer will resend
        the message and be told again).
        """
        ids = tuple(msg_ids)
        for msg_id in ids:
            _check_bytes("msg_id", msg_id, MSG_ID_LEN)
        if not 1 <= len(ids) <= self.receipt_capacity:
            raise LocalProtocolError(
                f"a receipt names 1..{self.receipt_capacity} messages on this channel"
            )
        if len(set(ids)) != len(ids):
            raise LocalProtocolError("a receipt names each message once")
        return self._seal(MessageType.RECEIPT, 0, encode_receipt(ids), now_ms, rng)

    def move_inbox(self, new_inbox: InboxQueue, *, now_ms: int, rng: RandomBytes) -> SendBlock:
        """Start moving our inbox to ``new_inbox`` (a queue the client just created with NEW).

        Returns the MOVE for the peer's current queue. Subscribe to ``new_inbox`` right away
        and keep reading the current inbox: the peer's messages sent before it hears of the
        move still arrive there. The move completes when :meth:`receive` returns
        :class:`InboxMoved`. If that does not come (the MOVE or its acknowledgement was lost),
        call :meth:`resend_move`; the peer answers a repeated MOVE again.

        One move at a time: refused while a move waits for its acknowledgement or while the
        previous inbox has not been retired (:meth:`finish_move`), and before the handshake
        is confirmed.
        """
        if not isinstance(new_inbox, InboxQueue):
            raise TypeError("new_inbox must be an InboxQueue")
        if not self._confirmed:
            raise LocalProtocolError("a move needs a confirmed channel")
        if self._pending_inbox is not None:
            raise LocalProtocolError("a move is already waiting for its acknowledgement")
        if self._retiring_inbox is not None:
            raise LocalProtocolError(
                "the previous move is not finished: retire the old inbox first (finish_move)"
            )
        current = self._inbox
        if (
            new_inbox.recipient_id == current.recipient_id
            or new_inbox.sender_id == current.sender_id
            or new_inbox.auth_seed == current.auth_seed
        ):
            raise LocalProtocolError("a move needs a new queue")
        if self._moves >= MAX_MOVES:
            raise LocalProtocolError("this channel has moved as often as it can")
        move = MovePayload(
            self._moves + 1, new_inbox.relay, new_inbox.sender_id, new_inbox.block_size
        )
        out = self._seal(MessageType.MOVE, 0, move.to_bytes(), now_ms, rng)
        self._moves, self._pending_inbox = move.generation, new_inbox
        return out

    def resend_move(self, *, now_ms: int, rng: RandomBytes) -> SendBlock:
        """The pending MOVE again, under a new ``seq``: when no acknowledgement came (the
        MOVE or the MOVE_ACK was lost), or when the peer asks for the MOVE's ``seq``."""
        pending = self._pending_inbox
        if pending is None:
            raise LocalProtocolError("no move is waiting for an acknowledgement")
        move = MovePayload(self._moves, pending.relay, pending.sender_id, pending.block_size)
        return self._seal(MessageType.MOVE, 0, move.to_bytes(), now_ms, rng)

    def finish_move(self) -> None:
        """The client drained and deleted :attr:`retiring_inbox`: forget it (and allow the
        next move). Blocks from the retired queue that still arrive are still accepted."""
        if self._retiring_inbox is None:
            raise LocalProtocolError("no retired inbox to forget")
        self._retiring_inbox = None

    def carried_confirmation(self, seq: int) -> bool:
        """True if our message ``seq`` was a handshake confirmation that can be asked for
        again: 0 (the first) or the number of the last one :meth:`resend_confirmation` made.

        Without the second, a confirmation lost twice (a hostile relay can drop both) would
        be asked for by a number the inviter does not recognise, and the acceptor would stay
        unconfirmed for good. Only the last resend is remembered: the acceptor asks for a
        number once (it gives the number up), so a new confirmation is only ever wanted in
        answer to the newest one. Always false on the acceptor's side."""
        return not self._acceptor and seq in (0, self._confirm_seq)

    def resend_confirmation(self, *, now_ms: int, rng: RandomBytes) -> SendBlock:
        """The inviter's answer when the acceptor asks again for a number that carried the
        confirmation (:meth:`carried_confirmation`): the confirmation (the only message the
        client's outbox does not hold), under a new number, which is remembered. A copy the
        acceptor does not need is harmless: it answers a repeat with :class:`Ignored`."""
        if self._acceptor:
            raise LocalProtocolError("only the inviter sends a confirmation")
        confirm = ConfirmPayload(
            self._invitation_id, self._crypto.signing_public_key(self._outbox.auth_seed)
        )
        out = self._seal(MessageType.HANDSHAKE_CONFIRM, 0, confirm.to_bytes(), now_ms, rng)
        self._confirm_seq = out.header.seq
        return out

    # ----------------------------------------------------------------- receiving

    def receive(
        self, block: bytes, *, now_ms: int | None = None, rng: RandomBytes | None = None
    ) -> Event:
        """Decrypt and check one block from our inbox (current, pending or retiring: the
        channel does not care which queue a block came from, only the peer can make one).

        Pass ``now_ms`` and ``rng`` always: answering a MOVE (:class:`PeerMoved`) draws a new
        sender key and seals a MOVE_ACK. Without them a MOVE raises
        :class:`~kith.errors.LocalProtocolError` and changes nothing.

        Raises :class:`~kith.errors.DecryptError` (forged, tampered, replayed, for another
        channel), :class:`~kith.protocol.envelope.EnvelopeError` or :class:`HandshakeError`
        (malformed, or a control message that does not fit the channel's state); in every case
        the channel is unchanged.
        """
        envelope = decode_envelope(block)
        if envelope.sender_key is not None and envelope.sender_key != self._their_keys.curve25519:
            raise DecryptError
        session, plaintext = self._session.try_decrypt(envelope.kind, envelope.ciphertext)
        header, body = decode_inner(plaintext)
        window = self._window.accept(header.seq)
        msg_type = header.msg_type
        event: Event
        if msg_type >= FIRST_APPLICATION_TYPE:
            event = Received(header, body)
        elif msg_type == MessageType.RESEND_REQUEST:
            # Numbers we never used are the peer's error; drop them rather than the request.
            seqs = decode_resend_request(body)
            event = ResendRequested(tuple(s for s in seqs if s < self._next_seq))
        elif msg_type == MessageType.RECEIPT:
            event = Delivered(decode_receipt(body))
        elif msg_type == MessageType.HANDSHAKE_CONFIRM:
            if not self._acceptor:
                raise HandshakeError("unexpected handshake confirmation")
            confirm = ConfirmPayload.from_bytes(body)
            if confirm.invitation_id != self._invitation_id:
                raise HandshakeError("confirmation for another invitation")
            if self._confirmed:
                return self._repeated_confirmation(header, confirm, session, window)
            self._session, self._window = session, window
            self._confirmed, self._inbox_sender_key = True, confirm.sender_key
            return Confirmed(SecureInbox(self._inbox.recipient_id, confirm.sender_key))
        elif msg_type == MessageType.MOVE:
            return self._receive_move(header, body, session, window, now_ms, rng)
        elif msg_type == MessageType.MOVE_ACK:
            return self._receive_move_ack(header, body, session, window)
        else:
            raise HandshakeError(f"unexpected control message type {msg_type}")
        # Everything passed: commit.
        self._session, self._window = session, window
        return event

    def _repeated_confirmation(
        self, header: InnerHeader, confirm: ConfirmPayload, session: OlmSession, window: SeqWindow
    ) -> Event:
        """A confirmation after the first: the inviter answered a request for one that was
        lost, and an earlier copy arrived after all. It must not be an error, or the number
        would stay missing, be asked for again and be answered again, for ever. The key must
        be the one already in use: a confirmation cannot re-key the inbox. Once our inbox has
        moved, the key it carries secured a queue we no longer use, so nothing is left to
        check it against and it is stale, like a MOVE older than the peer's last."""
        if confirm.sender_key != self._inbox_sender_key and self._moves == 0:
            raise HandshakeError("a repeated confirmation with another key")
        self._session, self._window = session, window
        return Ignored(header)

    def _receive_move(
        self,
        header: InnerHeader,
        body: bytes,
        session: OlmSession,
        window: SeqWindow,
        now_ms: int | None,
        rng: RandomBytes | None,
    ) -> Event:
        """The peer's MOVE: check everything, then commit, switch the outbox, answer."""
        if not self._confirmed:
            raise HandshakeError("a move before the handshake was confirmed")
        move = MovePayload.from_bytes(body)
        if move.generation < self._peer_moves:  # overtaken by a later move: already done
            self._session, self._window = session, window
            return Ignored(header)
        current = self._outbox
        same_queue = move.relay == current.relay and move.sender_id == current.sender_id
        if move.generation == self._peer_moves:
            # A repeat (our acknowledgement was lost or is late): answer it again, same key.
            if not same_queue or move.block_size != current.block_size:
                raise HandshakeError("a repeated move names another queue")
            outbox = current
        elif move.generation == self._peer_moves + 1:
            if same_queue:
                raise HandshakeError("a move to the queue already in use")
            outbox = None  # a fresh sender key is drawn below, once nothing can fail
        else:
            raise HandshakeError("a move out of order: an earlier one was never made")
        if now_ms is None or rng is None:
            raise LocalProtocolError("receiving a move needs now_ms and rng")
        # Everything passed: commit, then answer on the (new) queue.
        self._session, self._window = session, window
        if outbox is None:
            outbox = PeerQueue(move.relay, move.sender_id, move.block_size, rng(SEED_LEN))
            self._outbox, self._peer_moves = outbox, move.generation
            self._padding = Padding.for_block(outbox.block_size)
        ack = MoveAckPayload(
            move.generation, outbox.sender_id, self._crypto.signing_public_key(outbox.auth_seed)
        )
        return PeerMoved(self._seal(MessageType.MOVE_ACK, 0, ack.to_bytes(), now_ms, rng))

    def _receive_move_ack(
        self, header: InnerHeader, body: bytes, session: OlmSession, window: SeqWindow
    ) -> Event:
        """The peer's answer to our MOVE: the new inbox becomes ours, the old one retires."""
        ack = MoveAckPayload.from_bytes(body)
        pending = self._pending_inbox
        if pending is not None and ack.generation == self._moves:
            if ack.sender_id != pending.sender_id:
                raise HandshakeError("a move acknowledgement for another queue")
            retired = self._inbox
            self._session, self._window = session, window
            self._inbox, self._inbox_sender_key = pending, ack.sender_key
            self._pending_inbox, self._retiring_inbox = None, retired
            return InboxMoved(SecureInbox(pending.recipient_id, ack.sender_key), retired)
        repeated = (
            pending is None
            and ack.generation == self._moves
            and ack.sender_id == self._inbox.sender_id
            and ack.sender_key == self._inbox_sender_key
        )
        if ack.generation < self._moves or repeated:
            self._session, self._window = session, window
            return Ignored(header)
        raise HandshakeError("a move acknowledgement without a move")

    # ----------------------------------------------------------------- persistence

    def to_bytes(self, pickle_key: bytes) -> bytes:
        """The whole channel sealed under ``pickle_key`` (32 bytes from the vault)."""
        _check_bytes("pickle_key", pickle_key, PICKLE_KEY_LEN)
        olm_key = self._crypto.derive_key(pickle_key, _OLM_PICKLE_LABEL)
        role = _Role(0)
        if self._acceptor:
            role |= _Role.ACCEPTOR
        if self._confirmed:
            role |= _Role.CONFIRMED
        if self._inbox_sender_key is not None:
            role |= _Role.HAS_INBOX_KEY
        if self._pending_inbox is not None:
            role |= _Role.MOVING
        if self._retiring_inbox is not None:
            role |= _Role.RETIRING
        account = self._account.pickle(olm_key)
        session = self._session.pickle(olm_key)
        state = (
            bytes((CHANNEL_STATE_VERSION, int(role)))
            + self._invitation_id
            + self._their_keys.to_bytes()
            + u64(self._next_seq)
            + self._window.to_bytes()
            + _encode_inbox(self._inbox)
            + _encode_peer(self._outbox)
            + (self._inbox_sender_key or b"")
            + u32(self._moves)
            + u32(self._peer_moves)
            + (_encode_inbox(self._pending_inbox) if self._pending_inbox else b"")
            + (_encode_inbox(self._retiring_inbox) if self._retiring_inbox else b"")
            + u32(len(account))
            + account
            + u32(len(session))
            + session
            + u64(self._confirm_seq)
        )
        return self._crypto.seal(pickle_key, _CHANNEL_LABEL, state)

    @classmethod
    def from_bytes(cls, blob: bytes, pickle_key: bytes, crypto: PairwiseCrypto) -> Channel:
        """Restore a channel (state version 1, 2 or 3). DecryptError if the key is wrong or the
        blob was altered."""
        _check_bytes("pickle_key", pickle_key, PICKLE_KEY_LEN)
        r = Reader(crypto.open(pickle_key, _CHANNEL_LABEL, blob), StateError)
        olm_key = crypto.derive_key(pickle_key, _OLM_PICKLE_LABEL)
        version = r.u8("version")
        if version not in (1, 2, CHANNEL_STATE_VERSION):
            raise StateError("channel state version not understood")
        raw_role = r.u8("role")
        if raw_role & ~int(_V1_ROLES if version == 1 else _ALL_ROLES):
            raise StateError("channel state role not understood")
        role = _Role(raw_role)
        invitation_id = r.take(ID_LEN, "invitation id")
        their_keys = IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "their keys"))
        next_seq = r.u64("next seq")
        try:
            window = SeqWindow.from_bytes(r.take(len(SeqWindow().to_bytes()), "window"))
        except WindowDecodeError as exc:
            raise StateError(str(exc)) from None
        inbox = _decode_inbox(r)
        outbox = _decode_peer(r)
        inbox_key = r.take(KEY_LEN, "inbox key") if role & _Role.HAS_INBOX_KEY else None
        moves = peer_moves = 0
        pending = retiring = None
        if version >= 2:
            moves, peer_moves = r.u32("moves"), r.u32("peer moves")
            pending = _decode_inbox(r) if role & _Role.MOVING else None
            retiring = _decode_inbox(r) if role & _Role.RETIRING else None
            if (pending or retiring) and not moves:
                raise StateError("channel state names a move that never started")
        account = crypto.load_account(r.take(r.u32("account length"), "account"), olm_key)
        session = crypto.load_session(r.take(r.u32("session length"), "session"), olm_key)
        # Before version 3 only the first confirmation (0) could be asked for again.
        confirm_seq = r.u64("confirm seq") if version >= 3 else 0
        if confirm_seq and (confirm_seq >= next_seq or role & _Role.ACCEPTOR):
            raise StateError("channel state names a confirmation it never sent")
        r.end("channel state")
        return cls(
            crypto=crypto,
            account=account,
            session=session,
            their_keys=their_keys,
            invitation_id=invitation_id,
            inbox=inbox,
            outbox=outbox,
            acceptor=bool(role & _Role.ACCEPTOR),
            confirmed=bool(role & _Role.CONFIRMED),
            next_seq=next_seq,
            window=window,
            inbox_sender_key=inbox_key,
            moves=moves,
            peer_moves=peer_moves,
            pending_inbox=pending,
            retiring_inbox=retiring,
            confirm_seq=confirm_seq,
        )

    def __repr__(self) -> str:
        return f"Channel(invitation_id={self._invitation_id.hex()}, confirmed={self._confirmed})"


def _encode_inbox(q: InboxQueue) -> bytes:
    return str8(q.relay) + q.recipient_id + q.sender_id + u32(q.block_size) + q.auth_seed


def _decode_inbox(r: Reader) -> InboxQueue:
    try:
        return InboxQueue(
            r.address("inbox relay"),
            r.take(QUEUE_ID_LEN, "inbox recipient id"),
            r.take(QUEUE_ID_LEN, "inbox sender id"),
            r.u32("inbox block size"),
            r.take(SEED_LEN, "inbox seed"),
        )
    except LocalProtocolError as exc:
        raise StateError(str(exc)) from None


def _encode_peer(q: PeerQueue) -> bytes:
    return str8(q.relay) + q.sender_id + u32(q.block_size) + q.auth_seed


def _decode_peer(r: Reader) -> PeerQueue:
    try:
        return PeerQueue(
            r.address("peer relay"),
            r.take(QUEUE_ID_LEN, "peer sender id"),
            r.u32("peer block size"),
            r.take(SEED_LEN, "peer seed"),
        )
    except LocalProtocolError as exc:
        raise StateError(str(exc)) from None


# --------------------------------------------------------------------------- the handshake


Effect = SendBlock | SecureInbox


class PendingInvitation:
    """The inviter's side of one invitation, until it is used or expires.

    Keep it (sealed, via :meth:`to_bytes`) until it expires even after use: it is what refuses
    a second acceptance. After use it holds no secret.
    """

    __slots__ = ("_account", "_crypto", "_inbox", "_invitation")

    def __init__(
        self,
        *,
        crypto: PairwiseCrypto,
        invitation: Invitation,
        inbox: InboxQueue,
        account: OlmAccount | None,
    ) -> None:
        self._crypto = crypto
        self._invitation = invitation
        self._inbox = inbox
        self._account = account

    @property
    def invitation(self) -> Invitation:
        return self._invitation

    @property
    def inbox(self) -> InboxQueue:
        return self._inbox

    @property
    def used(self) -> bool:
        return self._account is None

    def receive(
        self, block: bytes, *, now_ms: int, rng: RandomBytes
    ) -> tuple[Channel, tuple[Effect, ...]]:
        """Process a block that arrived on the invitation's queue.

        Returns the new channel and the effects to carry out, in order: secure this inbox with
        the acceptor's sender key, then send the confirmation. Raises InvitationUsed,
        InvitationExpired, DecryptError, EnvelopeError or HandshakeError, and then nothing
        changed (in particular the one-time key is still unused).
        """
        invitation = self._invitation
        if self._account is None:
            raise InvitationUsed("this invitation was already used")
        invitation.check_unexpired(now_ms)
        envelope = decode_envelope(block)
        if envelope.kind is not OlmKind.PREKEY or envelope.sender_key is None:
            raise HandshakeError("a handshake must be a pre-key message")
        account, session, plaintext = self._account.create_inbound(
            envelope.sender_key, envelope.ciphertext
        )
        header, body = decode_inner(plaintext)
        if header.msg_type != MessageType.HANDSHAKE_ACCEPT or header.seq != 0:
            raise HandshakeError("the first message must be the handshake")
        accept = AcceptPayload.from_bytes(body)
        if accept.invitation_id != invitation.invitation_id:
            raise HandshakeError("handshake for another invitation")
        if accept.identity.curve25519 != envelope.sender_key:
            raise HandshakeError("handshake identity does not match its Olm session")
        self._crypto.verify(
            accept.identity.ed25519,
            accept.signature,
            accept_signing_payload(invitation, accept.signed_part()),
        )
        seed = rng(SEED_LEN)
        channel = Channel(
            crypto=self._crypto,
            account=account,
            session=session,
            their_keys=accept.identity,
            invitation_id=invitation.invitation_id,
            inbox=self._inbox,
            outbox=PeerQueue(
                accept.reply_relay, accept.reply_sender_id, accept.reply_block_size, seed
            ),
            acceptor=False,
            confirmed=True,
            window=SeqWindow().accept(0),
            inbox_sender_key=accept.sender_key,
        )
        confirm = ConfirmPayload(invitation.invitation_id, self._crypto.signing_public_key(seed))
        out = channel._seal(MessageType.HANDSHAKE_CONFIRM, 0, confirm.to_bytes(), now_ms, rng)
        self._account = None  # used: the one-time key is gone with the copy we keep
        return channel, (SecureInbox(self._inbox.recipient_id, accept.sender_key), out)

    def to_bytes(self, pickle_key: bytes) -> bytes:
        _check_bytes("pickle_key", pickle_key, PICKLE_KEY_LEN)
        invitation = self._invitation.to_bytes()
        state = (
            bytes((PENDING_STATE_VERSION, int(self.used)))
            + u16(len(invitation))
            + invitation
            + _encode_inbox(self._inbox)
        )
        if self._account is not None:
            olm_key = self._crypto.derive_key(pickle_key, _OLM_PICKLE_LABEL)
            account = self._account.pickle(olm_key)
            state += u32(len(account)) + account
        return self._crypto.seal(pickle_key, _PENDING_LABEL, state)

    @classmethod
    def from_bytes(
        cls, blob: bytes, pickle_key: bytes, crypto: PairwiseCrypto
    ) -> PendingInvitation:
        _check_bytes("pickle_key", pickle_key, PICKLE_KEY_LEN)
        r = Reader(crypto.open(pickle_key, _PENDING_LABEL, blob), StateError)
        if r.u8("version") != PENDING_STATE_VERSION:
            raise StateError("invitation state version not understood")
        used = r.u8("used")
        try:
            invitation = Invitation.from_bytes(r.take(r.u16("invitation length"), "invitation"))
        except InvitationError as exc:
            raise StateError(str(exc)) from None
        inbox = _decode_inbox(r)
        account = None
        if not used:
            olm_key = crypto.derive_key(pickle_key, _OLM_PICKLE_LABEL)
            account = crypto.load_account(r.take(r.u32("account length"), "account"), olm_key)
        r.end("invitation state")
        return cls(crypto=crypto, invitation=invitation, inbox=inbox, account=account)


def create_invitation(
    *,
    inbox: InboxQueue,
    now_ms: int,
    rng: RandomBytes,
    crypto: PairwiseCrypto,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> PendingInvitation:
    """Make a signed one-time invitation to the (freshly created, unused) queue ``inbox``.

    A new Olm account is created for the relationship this invitation starts; nothing in the
    invitation relates to any other contact.
    """
    if not 0 < ttl_ms <= MAX_TTL_MS:
        raise LocalProtocolError(f"invitation lifetime must be 1..{MAX_TTL_MS} ms")
    account = crypto.new_account()
    one_time_key = account.new_one_time_key()
    unsigned = Invitation(
        invitation_id=rng(ID_LEN),
        expires_at_ms=now_ms + ttl_ms,
        relay=inbox.relay,
        sender_id=inbox.sender_id,
        block_size=inbox.block_size,
        identity=account.identity_keys,
        one_time_key=one_time_key,
        signature=bytes(SIGNATURE_LEN),
    )
    invitation = replace(unsigned, signature=account.sign(unsigned.signing_payload()))
    return PendingInvitation(crypto=crypto, invitation=invitation, inbox=inbox, account=account)


def accept_invitation(
    invitation: Invitation,
    *,
    inbox: InboxQueue,
    now_ms: int,
    rng: RandomBytes,
    crypto: PairwiseCrypto,
) -> tuple[Channel, SendBlock]:
    """Accept a (verified here) invitation: a new identity, an Olm session, the ACCEPT block.

    ``inbox`` is a queue this side just created for this contact. Raises InvitationExpired or
    DecryptError (forged invitation, unusable keys) and creates nothing then.
    """
    invitation.verify(now_ms, crypto)
    account = crypto.new_account()
    session = account.create_outbound(invitation.identity.curve25519, invitation.one_time_key)
    seed = rng(SEED_LEN)
    identity = account.identity_keys
    unsigned = AcceptPayload(
        invitation.invitation_id,
        identity,
        inbox.relay,
        inbox.sender_id,
        inbox.block_size,
        crypto.signing_public_key(seed),
        bytes(SIGNATURE_LEN),
    )
    payload = replace(
        unsigned, signature=account.sign(accept_signing_payload(invitation, unsigned.signed_part()))
    )
    channel = Channel(
        crypto=crypto,
        account=account,
        session=session,
        their_keys=invitation.identity,
        invitation_id=invitation.invitation_id,
        inbox=inbox,
        outbox=PeerQueue(invitation.relay, invitation.sender_id, invitation.block_size, seed),
        acceptor=True,
        confirmed=False,
    )
    out = channel._seal(MessageType.HANDSHAKE_ACCEPT, 0, payload.to_bytes(), now_ms, rng)
    return channel, out
