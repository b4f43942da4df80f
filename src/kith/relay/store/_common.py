"""Small pieces every store backend shares, so the three cannot drift apart on semantics.

- :func:`check_id` rejects ids of the wrong type or size before they reach a backend (a
  ``str`` id would silently become a different Redis key or SQLite value, and that is a
  local bug worth failing loudly on).
- :func:`expiry_cutoff` is the one definition of "expired": a message is expired once it is
  *older than* ``ttl_seconds``, i.e. ``received_at < now - ttl_seconds``.
- :class:`Watchers` counts ``watch``/``unwatch`` calls per queue. Counting (rather than a set)
  keeps a queue watched while any caller still wants it, whatever order overlapping
  subscribe/unsubscribe calls arrive in; a leaked count only costs spurious hints, which the
  contract allows, whereas a lost one would silence a subscriber.
- :class:`UseMarks` remembers which queues this process has already marked used in the current
  granule, so marking a queue on every ``pending`` costs one write per queue per week, not one
  per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

from kith.relay.store.base import Limits, use_mark

#: Ids on the wire are 16 bytes; the stores accept anything from 1 to 64 so they do not
#: hard-code the protocol, but refuse empty or absurd ids.
MAX_ID_LEN: Final = 64


def check_id(name: str, value: object) -> bytes:
    """Return ``value`` if it is a plausible id; raise TypeError/ValueError otherwise."""
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_ID_LEN:
        raise ValueError(f"{name} must be 1..{MAX_ID_LEN} bytes, got {len(value)}")
    return value


def check_body(body: object) -> bytes:
    if not isinstance(body, bytes):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    return body


def check_count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


def expiry_cutoff(now: int, limits: Limits) -> int:
    """Messages with ``received_at`` strictly below this are expired."""
    return now - limits.ttl_seconds


def hint_after_caller(
    loop: asyncio.AbstractEventLoop, hint: Callable[[bytes, int], None], rid: bytes, seq: int
) -> None:
    """Schedule a local new-message hint for after the put's caller has seen the result.

    Call it while completing a put (inside the coroutine, or just before resolving the future
    the caller waits on). The caller's completion callbacks are scheduled when the put
    completes; the hint goes two loop turns out, so they run first. A relay that pushes the
    message straight from the returned :class:`~kith.relay.store.base.StoredRef` then sees its
    own hint as stale and drops it, instead of starting a read that finds nothing new.
    """
    loop.call_soon(loop.call_soon, hint, rid, seq)


class Watchers:
    """Reference counts of watched recipient ids."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}

    def add(self, recipient_id: bytes) -> bool:
        """Count one more watcher; True if the queue was not watched before."""
        n = self._counts.get(recipient_id, 0)
        self._counts[recipient_id] = n + 1
        return n == 0

    def remove(self, recipient_id: bytes) -> bool:
        """Count one watcher less; True if that was the last one. Unknown ids are a no-op."""
        n = self._counts.get(recipient_id, 0)
        if n <= 1:
            self._counts.pop(recipient_id, None)
            return n == 1
        self._counts[recipient_id] = n - 1
        return False

    def __contains__(self, recipient_id: object) -> bool:
        return recipient_id in self._counts

    def ids(self) -> list[bytes]:
        return list(self._counts)

    def clear(self) -> None:
        self._counts.clear()


class UseMarks:
    """The use marks this process has written, so a store writes each at most once.

    Only a cache: forgetting an entry costs one redundant write, never a lost mark. It is
    emptied when it reaches ``limit`` entries, so it stays bounded however many queues pass
    through, and it holds nothing the store does not hold already.
    """

    __slots__ = ("_limit", "_marks")

    def __init__(self, limit: int = 100_000) -> None:
        self._marks: dict[bytes, int] = {}
        self._limit = limit

    def due(self, recipient_ids: Iterable[bytes], now: int) -> tuple[int, list[bytes]]:
        """The mark for ``now`` and the ids whose stored mark may be older than it."""
        mark = use_mark(now)
        return mark, [r for r in recipient_ids if self._marks.get(r, -1) < mark]

    def written(self, recipient_ids: Iterable[bytes], mark: int) -> None:
        """Record that the store now holds ``mark`` (or later) for these ids."""
        for r in recipient_ids:
            if len(self._marks) >= self._limit:
                self._marks.clear()
            self._marks[r] = mark

    def forget(self, recipient_id: bytes) -> None:
        self._marks.pop(recipient_id, None)
