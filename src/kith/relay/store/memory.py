"""An in-memory relay store: the reference semantics of the contract, for tests and demos.

It keeps everything in dicts and loses everything on exit, so it is *not* durable; otherwise
it behaves exactly like the SQLite and Redis backends (the contract suite runs against all
three): per-queue contiguous ``seq``, atomic quota and sender-key checks, expiry, and
new-message hints to local watchers.

Hints for a put are scheduled on the event loop (``call_soon``) rather than called inside
``put_message``, so the caller sees the :class:`~kith.relay.store.base.StoredRef` first and can
push the message itself; the hint that follows is then a harmless spurious one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from kith.errors import StoreError, StoreUnavailable
from kith.relay.store._common import (
    Watchers,
    check_body,
    check_count,
    check_id,
    expiry_cutoff,
    hint_after_caller,
)
from kith.relay.store.base import (
    AcceptFn,
    AlreadySecured,
    DuplicateId,
    Limits,
    NoQueue,
    NotAuthorized,
    NotifyFn,
    QueueRecord,
    QuotaExceeded,
    StoredMessage,
    StoredRef,
    idle_cutoff,
    use_mark,
)

T = TypeVar("T")


@dataclass(slots=True)
class _Queue:
    record: QueueRecord
    created_at: int
    #: coarse mark of the last use (base.use_mark): what expire_queues judges idleness by
    last_used: int
    last_seq: int = 0
    nbytes: int = 0
    #: insertion order is seq order, because seqs are handed out in insertion order
    messages: dict[bytes, StoredMessage] = field(default_factory=dict)


class MemoryStore:
    """The relay store contract over plain dicts. Not durable; one process only."""

    def __init__(self) -> None:
        self._by_recipient: dict[bytes, _Queue] = {}
        self._by_sender: dict[bytes, _Queue] = {}
        self._watchers = Watchers()
        self._total = 0  # bytes of messages held, across every queue
        self._notify: NotifyFn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, notify: NotifyFn) -> None:
        if self._closed:
            raise StoreUnavailable("store is closed")
        self._notify = notify
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._closed = True
        self._watchers.clear()

    def _live(self) -> asyncio.AbstractEventLoop:
        if self._closed or self._loop is None:
            raise StoreUnavailable("store is not running")
        return self._loop

    # ------------------------------------------------------------------ queues

    async def create_queue(self, record: QueueRecord, now: int) -> None:
        self._live()
        check_id("recipient_id", record.recipient_id)
        check_id("sender_id", record.sender_id)
        if record.recipient_id in self._by_recipient or record.sender_id in self._by_sender:
            raise DuplicateId("queue id already in use")
        q = _Queue(record, now, use_mark(now))
        self._by_recipient[record.recipient_id] = q
        self._by_sender[record.sender_id] = q

    async def queue_by_recipient(self, recipient_id: bytes) -> QueueRecord | None:
        self._live()
        q = self._by_recipient.get(check_id("recipient_id", recipient_id))
        return q.record if q is not None else None

    async def queue_by_sender(self, sender_id: bytes) -> QueueRecord | None:
        self._live()
        q = self._by_sender.get(check_id("sender_id", sender_id))
        return q.record if q is not None else None

    def _queue(self, recipient_id: bytes) -> _Queue:
        q = self._by_recipient.get(check_id("recipient_id", recipient_id))
        if q is None:
            raise NoQueue("no such queue")
        return q

    async def secure_queue(self, recipient_id: bytes, sender_key: bytes) -> None:
        self._live()
        check_body(sender_key)
        q = self._queue(recipient_id)
        if q.record.sender_key is None:
            q.record = replace(q.record, sender_key=sender_key)
        elif q.record.sender_key != sender_key:
            raise AlreadySecured("queue already has another sender key")

    async def delete_queue(self, recipient_id: bytes) -> None:
        self._live()
        q = self._queue(recipient_id)
        self._drop(q)

    def _drop(self, q: _Queue) -> None:
        self._total -= q.nbytes
        del self._by_recipient[q.record.recipient_id]
        del self._by_sender[q.record.sender_id]
        q.messages.clear()
        q.nbytes = 0

    # ------------------------------------------------------------------ messages

    def put_message(
        self,
        sender_id: bytes,
        msg_id: bytes,
        body: bytes,
        now: int,
        limits: Limits,
        sender_key: bytes | None = None,
        *,
        accepted: AcceptFn | None = None,  # no staging here: never called
    ) -> asyncio.Future[StoredRef]:
        check_id("msg_id", msg_id)
        check_body(body)
        check_id("sender_id", sender_id)
        loop = self._live()
        return _settled(loop, self._put, loop, sender_id, msg_id, body, now, limits, sender_key)

    def _put(
        self,
        loop: asyncio.AbstractEventLoop,
        sender_id: bytes,
        msg_id: bytes,
        body: bytes,
        now: int,
        limits: Limits,
        sender_key: bytes | None,
    ) -> StoredRef:
        q = self._by_sender.get(sender_id)
        if q is None:
            raise NoQueue("no such queue")
        if q.record.sender_key is not None and sender_key != q.record.sender_key:
            raise NotAuthorized("queue is secured")
        if len(q.messages) + 1 > limits.max_messages or q.nbytes + len(body) > limits.max_bytes:
            raise QuotaExceeded("queue is full")
        if limits.max_store_bytes and self._total + len(body) > limits.max_store_bytes:
            raise QuotaExceeded("relay store is full")
        if msg_id in q.messages:
            raise DuplicateId("message id already in this queue")
        q.last_used = max(q.last_used, use_mark(now))
        q.last_seq += 1
        q.nbytes += len(body)
        self._total += len(body)
        q.messages[msg_id] = StoredMessage(q.last_seq, msg_id, now, body)
        rid = q.record.recipient_id
        if rid in self._watchers:
            hint_after_caller(loop, self._hint, rid, q.last_seq)
        return StoredRef(rid, q.last_seq, now)

    def _hint(self, recipient_id: bytes, seq: int | None = None) -> None:
        if self._notify is not None and not self._closed:
            self._notify(recipient_id, seq)

    async def pending(
        self, recipient_id: bytes, after_seq: int, limit: int, now: int, limits: Limits
    ) -> list[StoredMessage]:
        self._live()
        check_count("limit", limit)
        q = self._queue(recipient_id)
        q.last_used = max(q.last_used, use_mark(now))
        cutoff = expiry_cutoff(now, limits)
        out: list[StoredMessage] = []
        for m in q.messages.values():
            if len(out) >= limit:
                break
            if m.seq > after_seq and m.received_at >= cutoff:
                out.append(m)
        return out

    def ack(self, recipient_id: bytes, msg_id: bytes) -> asyncio.Future[bool]:
        check_id("msg_id", msg_id)
        check_id("recipient_id", recipient_id)
        return _settled(self._live(), self._ack, recipient_id, msg_id)

    def _ack(self, recipient_id: bytes, msg_id: bytes) -> bool:
        q = self._queue(recipient_id)
        m = q.messages.pop(msg_id, None)
        if m is None:
            return False
        q.nbytes -= len(m.body)
        self._total -= len(m.body)
        return True

    async def expire(self, now: int, limits: Limits) -> int:
        self._live()
        cutoff = expiry_cutoff(now, limits)
        n = 0
        for q in self._by_recipient.values():
            old = [m for m in q.messages.values() if m.received_at < cutoff]
            for m in old:
                del q.messages[m.msg_id]
                q.nbytes -= len(m.body)
                self._total -= len(m.body)
            n += len(old)
        return n

    async def touch_queues(self, recipient_ids: Iterable[bytes], now: int) -> None:
        self._live()
        mark = use_mark(now)
        for rid in recipient_ids:
            q = self._by_recipient.get(check_id("recipient_id", rid))
            if q is not None:
                q.last_used = max(q.last_used, mark)

    async def expire_queues(self, now: int, limits: Limits) -> int:
        self._live()
        cutoff = idle_cutoff(now, limits)
        idle = [q for q in self._by_recipient.values() if q.last_used <= cutoff]
        for q in idle:
            self._drop(q)
        return len(idle)

    # ------------------------------------------------------------------ hints and metrics

    async def watch(self, recipient_id: bytes) -> None:
        """Register interest locally. Does not consult the queues: a hint for an id that has
        no queue is harmless, and a subscriber may outlive its queue by a moment."""
        self._live()
        self._watchers.add(check_id("recipient_id", recipient_id))

    async def unwatch(self, recipient_id: bytes) -> None:
        self._live()
        self._watchers.remove(check_id("recipient_id", recipient_id))

    def counters(self) -> dict[str, int]:
        return {}

    async def stats(self) -> dict[str, int]:
        self._live()
        qs = self._by_recipient.values()
        return {
            "queues": len(self._by_recipient),
            "messages": sum(len(q.messages) for q in qs),
            "bytes": sum(q.nbytes for q in qs),
        }


def _settled(
    loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: object
) -> asyncio.Future[T]:
    """Run ``fn`` now and return its outcome as a finished future: a refusal (a StoreError)
    is delivered through the future, as from any other backend, not raised at the call.

    The loop is passed in: ``asyncio.get_running_loop()`` makes a ``getpid`` system call on
    every call before Python 3.12, which was 9 % of the memory relay's time at saturation."""
    fut: asyncio.Future[T] = loop.create_future()
    try:
        fut.set_result(fn(*args))
    except StoreError as exc:
        fut.set_exception(exc)
    return fut
