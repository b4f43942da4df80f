"""Replay rejection for one direction of a channel: a sliding window over sequence numbers.

Why kith tracks this itself: a decrypting library is the wrong place to rely on for "never
twice". vodozemac's Olm discards a message key after use, so a plain replay fails there today,
but a session restored from an older copy (a crash between decrypt and save, a restored backup)
decrypts old messages again, and Megolm (circles) decrypts a replayed message every time. kith
therefore numbers every message per direction (``seq`` in the encrypted inner header) and
remembers which numbers it has accepted, in the same sealed state as the session, so the two
can only be saved together.

The window (as in IPsec and DTLS) holds the highest accepted ``seq`` and a bitmap of the
:data:`WINDOW` numbers below it. A number is accepted at most once; a number more than
``WINDOW - 1`` below the highest is refused outright (it may never have been seen, but kith
cannot prove it was not, so it refuses). The state is a fixed 8 + 512 bytes whatever the
traffic, with no clock involved: a peer with a wrong clock is not locked out.

The window also shows *gaps*: numbers below the highest never received. That is how a loss is
noticed (see :meth:`SeqWindow.missing`) when a message arrives too late for Olm to still hold
its key.

A refused number raises the opaque :class:`~kith.errors.DecryptError`: to the caller a replay
is one more message that cannot be accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kith.errors import DecryptError, KithError
from kith.protocol._reader import Reader, u64

#: How many sequence numbers below the highest one are remembered. Larger than vodozemac's
#: 2000-message gap limit, so anything Olm can still decrypt in order is inside the window.
WINDOW: Final = 4096
_MASK: Final = (1 << WINDOW) - 1
ENCODED_LEN: Final = 8 + WINDOW // 8
MAX_SEQ: Final = (1 << 64) - 2


class WindowDecodeError(KithError):
    """A stored window is malformed (only from corrupted local state)."""


@dataclass(frozen=True, slots=True)
class SeqWindow:
    """Immutable: :meth:`accept` returns a new window, so callers commit it only on success."""

    highest: int = -1
    bits: int = 0  #: bit i set <=> ``highest - i`` was accepted (or given up on)

    def __post_init__(self) -> None:
        if not -1 <= self.highest <= MAX_SEQ:
            raise ValueError("highest out of range")
        if not 0 <= self.bits <= _MASK or (self.highest == -1 and self.bits):
            raise ValueError("bits out of range")

    def _bit(self, seq: int) -> bool:
        return bool(self.bits >> (self.highest - seq) & 1)

    def check(self, seq: int) -> None:
        """Raise DecryptError if ``seq`` was accepted before or is too old to tell."""
        if not 0 <= seq <= MAX_SEQ:
            raise DecryptError
        if seq > self.highest:
            return
        if self.highest - seq >= WINDOW or self._bit(seq):
            raise DecryptError

    def accept(self, seq: int) -> SeqWindow:
        """The window after accepting ``seq`` (checks first)."""
        self.check(seq)
        if seq > self.highest:
            shift = seq - self.highest
            bits = 1 if shift >= WINDOW else ((self.bits << shift) | 1) & _MASK
            return SeqWindow(seq, bits)
        return SeqWindow(self.highest, self.bits | 1 << (self.highest - seq))

    def give_up(self, seqs: tuple[int, ...]) -> SeqWindow:
        """Mark missing numbers as done: a resend replaces them, so a late original is refused."""
        window = self
        for seq in seqs:
            if 0 <= seq < window.highest and window.highest - seq < WINDOW and not window._bit(seq):
                window = SeqWindow(window.highest, window.bits | 1 << (window.highest - seq))
        return window

    def missing(self, limit: int = WINDOW) -> tuple[int, ...]:
        """Numbers below the highest that never arrived, oldest first (at most ``limit``)."""
        out: list[int] = []
        oldest = max(0, self.highest - WINDOW + 1)
        for seq in range(oldest, self.highest):
            if not self._bit(seq):
                out.append(seq)
                if len(out) >= limit:
                    break
        return tuple(out)

    def to_bytes(self) -> bytes:
        return u64(self.highest + 1) + self.bits.to_bytes(WINDOW // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> SeqWindow:
        r = Reader(data, WindowDecodeError)
        highest = r.u64("highest") - 1
        bits = int.from_bytes(r.take(WINDOW // 8, "bitmap"), "big")
        r.end("window")
        try:
            return cls(highest, bits)
        except ValueError as exc:
            raise WindowDecodeError(str(exc)) from None
