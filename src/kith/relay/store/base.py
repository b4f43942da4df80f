"""The relay's storage interface. Three backends implement it: memory, SQLite, Redis.

Contract every backend keeps (tests/unit/relay/test_store_contract.py runs it against all three):

- **Durable before acknowledged.** ``put_message`` and ``ack`` return only after the change is
  durable for that backend (SQLite: committed; Redis: accepted by the server). If they cannot
  make it durable they raise :class:`~kith.errors.StoreUnavailable` and nothing is acknowledged.
- **Order.** Messages of one queue come back from ``pending`` in the order ``put_message``
  was *called* (calls are enqueued synchronously before the first await), oldest first.
- **Nothing names anyone.** A backend stores only what these methods pass in: random ids, public
  queue keys, padded ciphertext, coarse times. No addresses, no per-client logs.
- **Atomic quotas.** ``put_message`` checks the per-queue limits and appends in one step.
- **Bad ids change nothing.** Unknown ids raise :class:`NoQueue`; nothing is written.
- **Abandoned queues go.** Each queue keeps one coarse mark of use: the start of the
  :data:`USE_GRANULE` period (a week) in which it was last created, sent to (``put_message``),
  read by its subscriber (``pending``) or held by a subscription (``touch_queues``).
  ``expire_queues`` deletes, with their messages, the queues whose mark shows them unused for
  at least ``limits.queue_ttl_seconds``. The mark is never finer than a week, so a seized
  store cannot tell which day or hour a queue was last used (docs/known-attacks.md).

The relay's protocol core (``kith.relay.core``) never calls a store: the adapter executes
the core's storage effects against one. Backends are therefore swappable without touching it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from kith.errors import StoreError


class NoQueue(StoreError):
    """No queue has that id."""


class QuotaExceeded(StoreError):
    """The queue holds its maximum number of messages or bytes."""


class AlreadySecured(StoreError):
    """The queue already has a different sender key."""


class NotAuthorized(StoreError):
    """The queue is secured and the sender did not prove its sender key."""


class DuplicateId(StoreError):
    """A queue id collided with an existing one (astronomically unlikely; caller retries)."""


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """A queue as the relay knows it: two unrelated random ids and public keys, nothing else."""

    recipient_id: bytes
    sender_id: bytes
    recipient_key: bytes
    sender_key: bytes | None = None


# The frames, effects and records built for every message are plain (not frozen) slotted
# dataclasses: a frozen one costs about 0.6 us more to build (measured), several are built
# per message, and nothing mutates them once built.
@dataclass(slots=True)
class StoredMessage:
    """One padded ciphertext waiting for its recipient.

    ``seq`` is a backend-internal ordering key: a per-queue counter that grows by exactly one
    per stored message (1, 2, 3, ...; acked or expired messages leave gaps in what is pending,
    never in the numbering). It never goes on the wire (``msg_id`` does). Contiguity lets the
    relay push a message it just stored without reading it back, knowing it missed nothing.
    """

    seq: int
    msg_id: bytes
    received_at: int
    body: bytes


@dataclass(slots=True)
class StoredRef:
    """Where ``put_message`` stored a message: its queue, its ``seq``, its coarse time."""

    recipient_id: bytes
    seq: int
    received_at: int


#: How coarsely a store records when a queue was last used (seconds). A week: fine enough to
#: remove abandoned queues within a week of their TTL, coarse enough that a seized relay
#: learns only which week a queue was last active, not which day or hour.
USE_GRANULE: Final = 7 * 24 * 3600


def use_mark(now: int) -> int:
    """The coarse mark stored for a queue used at ``now``: the start of its granule."""
    return int(now) - int(now) % USE_GRANULE


def idle_cutoff(now: int, limits: Limits) -> int:
    """Queues whose mark is at or below this have been unused for at least the queue TTL.

    A mark ``m`` means the last use fell in ``[m, m + USE_GRANULE)``, so the queue is surely
    idle for ``queue_ttl_seconds`` once ``m + USE_GRANULE + queue_ttl_seconds <= now``: rounding
    may keep a queue up to one granule longer than its TTL, never remove it earlier.
    """
    return int(now) - limits.queue_ttl_seconds - USE_GRANULE


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-queue quota and expiry (and the store-wide cap), in force when a message is stored.

    ``queue_ttl_seconds`` is how long a queue may go unused before the sweep deletes it (90
    days by default: four times the message expiry, so a device that is off for weeks, or
    hidden for a month, keeps its queues, while queues nobody uses any more do not pile up
    on disk for ever; docs/operations.md).
    """

    max_messages: int = 1000
    max_bytes: int = 16 * 1024 * 1024
    ttl_seconds: int = 21 * 24 * 3600
    queue_ttl_seconds: int = 90 * 24 * 3600
    #: Bytes of messages the whole store may hold, across every queue (0: no cap). A put past
    #: it is refused with QuotaExceeded, while ACKs and expiry go on freeing room, so filling
    #: the disk cannot also stop the relay from deleting.
    max_store_bytes: int = 0


#: Called with a recipient id when a message for it may be pending (possibly from another
#: relay process), and the message's ``seq`` when the store knows it (a put made through this
#: very store instance), else None. Must not block; may be called spuriously. The seq lets the
#: relay skip a hint for a message it already pushed straight from ``put_message``'s result.
NotifyFn = Callable[[bytes, int | None], None]

#: Called on the event loop, at most once, with a message's :class:`StoredRef` as soon as a
#: backend has checked and numbered it, possibly *before* it is durable (see
#: ``put_message``), possibly from within ``put_message`` itself. The relay pushes the
#: message to a local subscriber from here, and returns True if it did: only a message
#: someone was sent can be acknowledged before it is written.
AcceptFn = Callable[["StoredRef"], bool]


class Store(Protocol):
    """What the relay needs from storage. All methods may raise StoreUnavailable."""

    async def start(self, notify: NotifyFn) -> None:
        """Open connections, create or upgrade schemas; deliver new-message hints to notify."""

    async def close(self) -> None:
        """Flush and release everything. Idempotent."""

    async def create_queue(self, record: QueueRecord, now: int) -> None:
        """Store a new queue. Raises DuplicateId if either id is taken."""

    async def queue_by_recipient(self, recipient_id: bytes) -> QueueRecord | None: ...

    async def queue_by_sender(self, sender_id: bytes) -> QueueRecord | None: ...

    async def secure_queue(self, recipient_id: bytes, sender_key: bytes) -> None:
        """Set the sender key once. Same key again is a no-op; a different one raises
        AlreadySecured; unknown queue raises NoQueue."""

    async def delete_queue(self, recipient_id: bytes) -> None:
        """Delete the queue and every message in it. Unknown queue raises NoQueue."""

    def put_message(
        self,
        sender_id: bytes,
        msg_id: bytes,
        body: bytes,
        now: int,
        limits: Limits,
        sender_key: bytes | None = None,
        *,
        accepted: AcceptFn | None = None,
    ) -> Awaitable[StoredRef]:
        """Append a message to the queue whose sender id is ``sender_id``; durable on return.

        ``sender_key`` is the sender key the connection proved (SAUTH), or None. If the queue
        is secured and ``sender_key`` is not its key, raise NotAuthorized: the check is atomic
        with the insert, so securing a queue takes effect for every connection at once.
        Returns where the message went (so the caller can push it to a local subscriber).
        Raises NoQueue, NotAuthorized or QuotaExceeded (nothing stored). Notifies watchers of
        the queue in other processes (Redis) or this one; the local hint is scheduled after
        the caller has seen the result (:func:`~kith.relay.store._common.hint_after_caller`).

        The put is *enqueued* when the method is called, not when it is first awaited: a
        backend may return a plain future (no coroutine, no task) for this hot path. Bad
        arguments may therefore raise at the call.

        ``accepted``, if given, may be called with the ref once the message is checked and
        numbered but before it is durable. A backend that holds messages in memory for a
        moment before writing them (SQLite's staging) calls it so that the message can be
        delivered meanwhile, and holds only a message it says was delivered; if the
        recipient's ``ack`` for it arrives before it is written, the message is never
        written, and the put completes then: delivered and acknowledged is at least as final
        as durable. Backends without staging never call it; the caller delivers from the
        result.
        """

    async def pending(
        self, recipient_id: bytes, after_seq: int, limit: int, now: int, limits: Limits
    ) -> list[StoredMessage]:
        """Up to ``limit`` unexpired messages with ``seq > after_seq``, oldest first."""

    def ack(self, recipient_id: bytes, msg_id: bytes) -> Awaitable[bool]:
        """Delete one message; durable on return. False if it was not there. Like
        ``put_message``, enqueued at the call and may return a plain future."""

    async def watch(self, recipient_id: bytes) -> None:
        """Start delivering notify() hints for this queue (a subscriber is connected here)."""

    async def unwatch(self, recipient_id: bytes) -> None: ...

    async def expire(self, now: int, limits: Limits) -> int:
        """Delete messages older than ``limits.ttl_seconds``. Returns how many."""

    async def touch_queues(self, recipient_ids: Iterable[bytes], now: int) -> None:
        """Mark these queues used at ``now`` (coarsely, see :func:`use_mark`).

        The relay calls it before :meth:`expire_queues` with every queue it holds a
        subscription for, so a subscriber connected for longer than the queue TTL without
        re-subscribing never loses its queue, whichever relay process runs the sweep. Unknown
        ids are skipped (a subscription may outlive its queue by a moment). ``put_message``
        and ``pending`` mark their queue themselves.
        """

    async def expire_queues(self, now: int, limits: Limits) -> int:
        """Delete every queue unused for ``limits.queue_ttl_seconds`` (mark at or below
        :func:`idle_cutoff`), with its messages, as ``delete_queue`` would. Returns how many
        queues."""

    async def stats(self) -> dict[str, int]:
        """Aggregate counts only (queues, messages, bytes) for metrics."""

    def counters(self) -> dict[str, int]:
        """Aggregate event counts since start, for metrics (exported as counters). May be
        empty; never per queue."""
