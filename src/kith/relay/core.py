"""The relay's protocol logic for one connection, sans-I/O.

Theory of operation
-------------------
:class:`RelayConnection` is fed the bytes of each WebSocket message (:meth:`receive`) and the
current time. It never touches a socket, a clock, a random source or a database. It returns a
list of *outputs*:

- :class:`Reply`: bytes to send on this connection, in list order;
- an *effect* (:class:`CreateQueue`, :class:`LoadQueue`, :class:`SecureQueue`,
  :class:`DeleteQueue`, :class:`StoreMessage`, :class:`Fetch`, :class:`AckMessage`,
  :class:`Subscribe`, :class:`Unsubscribe`): work for the adapter to do against the store or
  the subscription registry. The adapter feeds each effect's outcome back through
  :meth:`complete` (a value, or the exception the store raised), which returns more outputs.

The adapter must start storage effects in the order they are returned: the store's contract is
that messages of one queue are ordered by call order, and the core returns ``StoreMessage``
effects in the order the SENDs arrived.

Authorisation state lives here, bound to this connection and its challenge:

- ``SUB`` is verified once (signature by the queue's recipient key); after that ``ACK`` for
  messages delivered on this subscription needs no signature.
- ``SAUTH`` proves a sender key once per connection and queue; later ``SEND``s to that queue on
  this connection pass the proven key to the store, which checks it atomically with the insert.
  So a connection that sent before the queue was secured cannot keep sending after.
- ``KEY`` and ``DEL`` are rare and carry their own signature.

Delivery keeps up to ``window`` unacknowledged messages in flight per subscription. A fetch is
issued when the subscription starts, when the store hints that a message arrived
(:meth:`notify`), and when an ACK frees room; at most one fetch per queue is outstanding, and
a hint that arrives during a fetch triggers one more fetch afterwards, so no message is missed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kith.crypto.signing import verify
from kith.errors import DecryptError, StoreUnavailable
from kith.protocol import relay as p
from kith.relay.store.base import (
    AlreadySecured,
    DuplicateId,
    Limits,
    NoQueue,
    NotAuthorized,
    QueueRecord,
    QuotaExceeded,
    StoredMessage,
    StoredRef,
)

RandomBytes = Callable[[int], bytes]

#: Received times are stored and shown rounded down to this many seconds, so a seized relay
#: holds no fine-grained timing of the messages still waiting in it.
TIME_GRANULARITY = 60


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """What one relay enforces. Defaults are the documented ones (docs/protocol/relay.md)."""

    block_size: int = p.DEFAULT_BLOCK_SIZE
    window: int = 64
    limits: Limits = field(default_factory=Limits)
    #: token bucket per connection: sustained frames per second and burst size
    rate_per_second: float = 20_000.0
    rate_burst: int = 40_000
    #: a second, smaller bucket for commands that cost a store lookup and a signature check
    #: (SUB, KEY, DEL, SAUTH) or create state (NEW): big enough for a client to re-subscribe
    #: all its queues after a reconnect, small enough that one connection cannot monopolise the
    #: relay with forgeries or fill its disk with queues at frame rate
    signed_per_second: float = 500.0
    signed_burst: int = 10_000
    #: subscriptions one connection may hold at once
    max_subscriptions: int = 10_000

    def __post_init__(self) -> None:
        if not p.MIN_BLOCK_SIZE <= self.block_size <= p.MAX_BLOCK_SIZE:
            raise ValueError(
                f"block_size must be within {p.MIN_BLOCK_SIZE}..{p.MAX_BLOCK_SIZE} bytes"
            )
        if not 1 <= self.window <= 65535:
            raise ValueError("window must be within 1..65535")
        if (
            self.rate_per_second <= 0
            or self.rate_burst < 1
            or self.signed_per_second <= 0
            or self.signed_burst < 1
        ):
            raise ValueError("rate limit must be positive")
        if self.max_subscriptions < 1:
            raise ValueError("max_subscriptions must be positive")


class Counters:
    """Aggregate relay metrics. Plain integers: no ids, no addresses, nothing per client."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


# --------------------------------------------------------------------------- outputs


# The frames, effects and records built for every message are plain (not frozen) slotted
# dataclasses: a frozen one costs about 0.6 us more to build (measured), several are built
# per message, and nothing mutates them once built.
@dataclass(slots=True)
class Reply:
    data: bytes


@dataclass(slots=True)
class CreateQueue:
    corr_id: int
    record: QueueRecord
    now: int


@dataclass(slots=True)
class LoadQueue:
    """Look up a queue for a command that must be authorised against its keys.

    Outcome: ``QueueRecord | None``. ``by_sender`` selects the sender-id index.
    """

    command: p.Sub | p.Key | p.Del | p.SAuth
    entity_id: bytes
    by_sender: bool


@dataclass(slots=True)
class SecureQueue:
    corr_id: int
    recipient_id: bytes
    sender_key: bytes


@dataclass(slots=True)
class DeleteQueue:
    corr_id: int
    recipient_id: bytes


@dataclass(slots=True)
class StoreMessage:
    """Outcome: :class:`StoredRef`. ``sender_key`` is the key this connection proved, if any."""

    corr_id: int
    sender_id: bytes
    msg_id: bytes
    body: bytes
    now: int
    limits: Limits
    sender_key: bytes | None


@dataclass(slots=True)
class Subscribe:
    """Register this connection as the queue's subscriber (taking over from any other)."""

    recipient_id: bytes


@dataclass(slots=True)
class Unsubscribe:
    recipient_id: bytes


@dataclass(slots=True)
class Fetch:
    """Outcome: ``list[StoredMessage]`` (oldest first)."""

    recipient_id: bytes
    after_seq: int
    limit: int
    now: int
    limits: Limits


@dataclass(slots=True)
class AckMessage:
    """Outcome: ``bool`` (whether the message was there). ``quiet``: answer only a failure."""

    corr_id: int
    recipient_id: bytes
    msg_id: bytes
    quiet: bool = False


Effect = (
    CreateQueue
    | LoadQueue
    | SecureQueue
    | DeleteQueue
    | StoreMessage
    | Subscribe
    | Unsubscribe
    | Fetch
    | AckMessage
)
Output = Reply | Effect


@dataclass(slots=True)
class _Subscription:
    last_seq: int = 0
    inflight: dict[bytes, int] = field(default_factory=dict)
    fetching: bool = False
    #: a hint arrived (or the window was full) since the last fetch started
    dirty: bool = False
    #: generation, bumped on re-SUB so stale fetch results are dropped
    generation: int = 0
    fetch_generation: int = 0
    #: how many messages the outstanding fetch asked for
    fetch_limit: int = 0


class RelayConnection:
    """Protocol state of one client connection. See the module docstring."""

    def __init__(
        self,
        config: RelayConfig,
        challenge: bytes,
        random_bytes: RandomBytes,
        now: float,
        counters: Counters | None = None,
    ) -> None:
        if len(challenge) != p.CHALLENGE_LEN:
            raise ValueError("challenge must be 32 bytes")
        self.config = config
        self.challenge = challenge
        self._random = random_bytes
        self._subs: dict[bytes, _Subscription] = {}
        self._proven: dict[bytes, bytes] = {}  # sender id -> proven sender key
        self._frame_bucket = _Bucket(config.rate_per_second, config.rate_burst, now)
        self._signed_bucket = _Bucket(config.signed_per_second, config.signed_burst, now)
        self.counters = counters if counters is not None else Counters()
        self.closed = False

    # ------------------------------------------------------------------ entry points

    def hello(self) -> bytes:
        """The first frame the relay sends on a new connection."""
        return p.encode(
            p.Hello(
                p.MIN_VERSION,
                p.MAX_VERSION,
                self.challenge,
                self.config.block_size,
                self.config.window,
            )
        )

    def max_frame_size(self) -> int:
        return p.HEADER_LEN + p.ID_LEN + self.config.block_size

    def receive(self, data: bytes | str, now: float) -> list[Output]:
        """Handle one frame from the client."""
        self.counters.add("frames_in")
        if not self._frame_bucket.take(now):
            corr = _corr_of(data)
            self.counters.add("err_rate_limited")
            return [_err(corr, p.ErrorCode.RATE_LIMITED), *self._release_refused_ack(data, now)]
        if isinstance(data, str):
            self.counters.add("err_malformed")
            return [_err(0, p.ErrorCode.MALFORMED)]
        try:
            cmd = p.decode_command(data, self.config.block_size)
        except p.FrameError as exc:
            self.counters.add(f"err_{exc.code.name.lower()}")
            return [_err(exc.corr_id, exc.code)]
        costly = isinstance(cmd, p.New | p.Sub | p.Key | p.Del | p.SAuth)
        if costly and not self._signed_bucket.take(now):
            self.counters.add("err_rate_limited")
            return [_err(cmd.corr_id, p.ErrorCode.RATE_LIMITED)]
        return self._dispatch(cmd, now)

    def notify(self, recipient_id: bytes, now: float, seq: int | None = None) -> list[Output]:
        """The store hints that a message for ``recipient_id`` may be waiting.

        ``seq``, when known, is the message's sequence number: a hint for a message this
        subscription has already seen (pushed straight after it was stored) is dropped, which
        saves a store read per message on the hot path.
        """
        sub = self._subs.get(recipient_id)
        if sub is None or (seq is not None and seq <= sub.last_seq):
            return []
        sub.dirty = True
        return self._maybe_fetch(recipient_id, sub, now)

    def deliver_stored(
        self, ref: StoredRef, body: bytes, msg_id: bytes, now: float
    ) -> list[Output]:
        """Push a message this relay process just stored, without reading it back, when safe.

        Safe means: the subscription has room, no fetch is outstanding or owed, and the message
        is the very next one (``seq == last_seq + 1``; seqs are contiguous per queue), so no
        message stored elsewhere (another relay process) can have been skipped. Otherwise fall
        back to a hint: the next fetch picks it up.
        """
        sub = self._subs.get(ref.recipient_id)
        if sub is None:
            return []
        if (
            not sub.fetching
            and not sub.dirty
            and len(sub.inflight) < self.config.window
            and ref.seq == sub.last_seq + 1
        ):
            return self._push(
                ref.recipient_id, sub, [StoredMessage(ref.seq, msg_id, ref.received_at, body)]
            )
        sub.dirty = True
        return self._maybe_fetch(ref.recipient_id, sub, now)

    def taken_over(self, recipient_id: bytes) -> list[Output]:
        """Another connection subscribed to this queue: drop ours and tell the client."""
        if self._subs.pop(recipient_id, None) is None:
            return []
        return [Reply(p.encode(p.End(recipient_id)))]

    def subscriptions(self) -> list[bytes]:
        return list(self._subs)

    def close(self) -> list[Output]:
        """The connection ended: release every subscription."""
        self.closed = True
        subs, self._subs = self._subs, {}
        self._proven.clear()
        return [Unsubscribe(rid) for rid in subs]

    # ------------------------------------------------------------------ commands

    def _dispatch(self, cmd: p.Command, now: float) -> list[Output]:
        match cmd:
            case p.Ping(corr):
                return [Reply(p.encode(p.Pong(corr)))]
            case p.New(corr, rkey):
                rec = QueueRecord(self._random(p.ID_LEN), self._random(p.ID_LEN), rkey)
                return [CreateQueue(corr, rec, _coarse(now))]
            case p.Sub(_, rid, _) | p.Key(_, rid, _, _) | p.Del(_, rid, _):
                return [LoadQueue(cmd, rid, by_sender=False)]
            case p.SAuth(_, sid, _):
                return [LoadQueue(cmd, sid, by_sender=True)]
            case p.Send(corr, sid, body):
                return [
                    StoreMessage(
                        corr,
                        sid,
                        self._random(p.MSG_ID_LEN),
                        body,
                        _coarse(now),
                        self.config.limits,
                        self._proven.get(sid),
                    )
                ]
            case p.Ack(corr, rid, msg_id, quiet):
                sub = self._subs.get(rid)
                if sub is None or msg_id not in sub.inflight:
                    self.counters.add("err_no_message")
                    return [_err(corr, p.ErrorCode.NO_MESSAGE)]
                return [AckMessage(corr, rid, msg_id, quiet)]
        raise AssertionError("unreachable: decode_command returns only commands")

    # ------------------------------------------------------------------ effect outcomes

    def complete(self, effect: Effect, outcome: object, now: float) -> list[Output]:
        """Feed back the outcome of ``effect``: its value, or the exception it raised."""
        if self.closed:
            return []
        if isinstance(outcome, BaseException):
            return self._failed(effect, outcome, now)
        if type(effect) is StoreMessage:  # the hot path first, without a class pattern
            self.counters.add("messages_stored")
            return [Reply(p.encode_ok(effect.corr_id))]
        match effect:
            case CreateQueue(corr, rec, _):
                self.counters.add("queues_created")
                return [Reply(p.encode(p.Ids(corr, rec.recipient_id, rec.sender_id)))]
            case LoadQueue(cmd, _, _):
                if outcome is not None and not isinstance(outcome, QueueRecord):
                    raise TypeError("LoadQueue outcome must be a QueueRecord or None")
                return self._authorise(cmd, outcome, now)
            case SecureQueue(corr, _, _) | DeleteQueue(corr, _):
                return [Reply(p.encode_ok(corr))]
            case Fetch(rid, _, _, _, _):
                if not isinstance(outcome, list):
                    raise TypeError("Fetch outcome must be a list")
                return self._fetched(rid, outcome, now)
            case AckMessage(corr, rid, msg_id, quiet):
                sub = self._subs.get(rid)
                if sub is not None:
                    sub.inflight.pop(msg_id, None)
                if not outcome:
                    self.counters.add("err_no_message")
                    out: list[Output] = [_err(corr, p.ErrorCode.NO_MESSAGE)]
                else:
                    self.counters.add("messages_acked")
                    out = [] if quiet else [Reply(p.encode_ok(corr))]
                if sub is not None:
                    out += self._maybe_fetch(rid, sub, now)
                return out
            case Subscribe() | Unsubscribe():
                return []
        raise TypeError(f"unknown effect {type(effect).__name__}")

    def _failed(self, effect: Effect, exc: BaseException, now: float) -> list[Output]:
        if isinstance(effect, Fetch):
            rid = effect.recipient_id
            sub = self._subs.get(rid)
            self.counters.add("fetch_failed")
            if sub is None:
                return []
            if isinstance(exc, NoQueue):
                # The queue was deleted (from another connection): the subscription is over.
                del self._subs[rid]
                return [Unsubscribe(rid), Reply(p.encode(p.End(rid)))]
            # Nothing was delivered; the adapter retries soon (storage unavailable), and the
            # next hint or ack would too.
            sub.fetching = False
            sub.dirty = True
            return []
        if isinstance(effect, Subscribe | Unsubscribe):
            return []
        if isinstance(effect, CreateQueue) and isinstance(exc, DuplicateId):
            # 2^-128 odds; try once more with fresh ids rather than fail the client.
            rec = QueueRecord(
                self._random(p.ID_LEN), self._random(p.ID_LEN), effect.record.recipient_key
            )
            return [CreateQueue(effect.corr_id, rec, effect.now)]
        after: list[Output] = []
        if isinstance(effect, AckMessage):
            after = self._release(effect.recipient_id, effect.msg_id, now)
        corr = effect.command.corr_id if isinstance(effect, LoadQueue) else effect.corr_id
        if isinstance(exc, StoreUnavailable):
            code = p.ErrorCode.STORE_UNAVAILABLE
        elif isinstance(exc, QuotaExceeded):
            code = p.ErrorCode.QUOTA
        elif isinstance(exc, NoQueue | AlreadySecured | NotAuthorized):
            code = p.ErrorCode.AUTH
        else:
            code = p.ErrorCode.INTERNAL
        self.counters.add(f"err_{code.name.lower()}")
        return [_err(corr, code), *after]

    def _authorise(
        self, cmd: p.Sub | p.Key | p.Del | p.SAuth, rec: QueueRecord | None, now: float
    ) -> list[Output]:
        if rec is None:
            # Spend the same work as a real check, so the time of the refusal does not tell
            # whether the queue exists (one error code for both, and one cost).
            self._signed(_DUMMY_KEY, cmd.signature, p.FrameType(0x01), bytes(p.ID_LEN))
            return self._deny(cmd.corr_id)
        match cmd:
            case p.Sub(corr, rid, sig):
                if not self._signed(rec.recipient_key, sig, p.FrameType.SUB, rid):
                    return self._deny(corr)
                return self._subscribe(corr, rid, now)
            case p.Key(corr, rid, skey, sig):
                if not self._signed(rec.recipient_key, sig, p.FrameType.KEY, rid, skey):
                    return self._deny(corr)
                return [SecureQueue(corr, rid, skey)]
            case p.Del(corr, rid, sig):
                if not self._signed(rec.recipient_key, sig, p.FrameType.DEL, rid):
                    return self._deny(corr)
                out: list[Output] = []
                if self._subs.pop(rid, None) is not None:
                    out.append(Unsubscribe(rid))
                out.append(DeleteQueue(corr, rid))
                return out
            case p.SAuth(corr, sid, sig):
                if rec.sender_key is None:
                    # Not secured yet: nothing to prove, any holder of the sender id may send.
                    return [Reply(p.encode_ok(corr))]
                if not self._signed(rec.sender_key, sig, p.FrameType.SAUTH, sid):
                    return self._deny(corr)
                self._proven[sid] = rec.sender_key
                return [Reply(p.encode_ok(corr))]
        raise AssertionError("unreachable")

    def _signed(
        self, key: bytes, sig: bytes, ftype: p.FrameType, entity: bytes, extra: bytes = b""
    ) -> bool:
        self.counters.add("signatures_checked")
        try:
            verify(key, sig, p.auth_payload(ftype, self.challenge, entity, extra))
        except DecryptError:
            return False
        return True

    def _deny(self, corr: int) -> list[Output]:
        self.counters.add("err_auth")
        return [_err(corr, p.ErrorCode.AUTH)]

    def _subscribe(self, corr: int, rid: bytes, now: float) -> list[Output]:
        sub = self._subs.get(rid)
        if sub is None:
            if len(self._subs) >= self.config.max_subscriptions:
                self.counters.add("err_quota")
                return [_err(corr, p.ErrorCode.QUOTA)]
            sub = self._subs[rid] = _Subscription()
            out: list[Output] = [Subscribe(rid)]
        else:
            # Re-SUB on the same connection restarts delivery: unacked messages come again. A
            # fetch still outstanding stays outstanding (so at most one is in flight); its
            # result belongs to the old generation and is dropped, then a new fetch starts.
            sub.generation += 1
            sub.last_seq = 0
            sub.inflight.clear()
            out = []
        sub.dirty = True
        out.append(Reply(p.encode_ok(corr)))
        out += self._maybe_fetch(rid, sub, now)
        return out

    def _release(self, rid: bytes, msg_id: bytes, now: float) -> list[Output]:
        """An acknowledgement of this message failed: stop counting it against the window.

        The message stays stored and comes again on the next SUB (the client drops the copy).
        Left in flight, it would hold its slot for the connection's lifetime, and a client
        that acknowledges with QACK never hears of the failure: ``window`` such failures would
        stop delivery on the queue until the client subscribes again."""
        sub = self._subs.get(rid)
        if sub is None or sub.inflight.pop(msg_id, None) is None:
            return []
        sub.dirty = True  # room again: look for what is waiting
        return self._maybe_fetch(rid, sub, now)

    def _release_refused_ack(self, data: bytes | str, now: float) -> list[Output]:
        """A rate-limited frame is not run; if it is an ACK, its slot is released all the
        same (see :meth:`_release`)."""
        if not (isinstance(data, bytes) and len(data) > 1 and data[1] in _ACK_TYPES):
            return []
        try:
            cmd = p.decode_command(data, self.config.block_size)
        except p.FrameError:
            return []
        if not isinstance(cmd, p.Ack):
            return []
        return self._release(cmd.recipient_id, cmd.msg_id, now)

    # ------------------------------------------------------------------ delivery

    def _maybe_fetch(self, rid: bytes, sub: _Subscription, now: float) -> list[Output]:
        room = self.config.window - len(sub.inflight)
        if sub.fetching or not sub.dirty or room <= 0:
            return []
        sub.fetching = True
        sub.dirty = False
        sub.fetch_generation = sub.generation
        sub.fetch_limit = room
        return [Fetch(rid, sub.last_seq, room, _coarse(now), self.config.limits)]

    def _fetched(self, rid: bytes, messages: list[StoredMessage], now: float) -> list[Output]:
        sub = self._subs.get(rid)
        if sub is None:
            return []
        if sub.fetch_generation != sub.generation:
            sub.fetching = False
            return self._maybe_fetch(rid, sub, now)
        sub.fetching = False
        if len(messages) >= sub.fetch_limit:
            # The fetch came back full: more may be waiting behind it.
            sub.dirty = True
        out = self._push(rid, sub, messages)
        out += self._maybe_fetch(rid, sub, now)
        return out

    def _push(
        self, rid: bytes, sub: _Subscription, messages: list[StoredMessage]
    ) -> list[Output]:
        out: list[Output] = []
        for m in messages:
            if m.seq <= sub.last_seq:
                continue
            sub.last_seq = m.seq
            sub.inflight[m.msg_id] = m.seq
            out.append(Reply(p.encode_msg(rid, m.msg_id, m.received_at, m.body)))
        self.counters.add("messages_delivered", len(out))
        return out



#: A valid Ed25519 public key (RFC 8032 test 1), used only to make the refusal for an unknown
#: queue cost one real signature verification. The outcome is ignored: the answer is AUTH.
_DUMMY_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


class _Bucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _coarse(now: float) -> int:
    return int(now) // TIME_GRANULARITY * TIME_GRANULARITY


_ACK_TYPES: frozenset[int] = frozenset((p.FrameType.ACK, p.FrameType.QACK))


def _corr_of(data: bytes | str) -> int:
    if isinstance(data, bytes) and len(data) >= p.HEADER_LEN:
        return int.from_bytes(data[2:6], "big")
    return 0


def _err(corr: int, code: p.ErrorCode) -> Reply:
    return Reply(p.encode(p.Err(corr, code)))
