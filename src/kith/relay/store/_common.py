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
"""

from __future__ import annotations

from typing import Final

from kith.relay.store.base import Limits

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
