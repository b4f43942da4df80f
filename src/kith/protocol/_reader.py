"""A bounds-checked byte reader shared by the pairwise codecs.

Every read either returns exactly what was asked for or raises the error type the codec chose
(always a :class:`~kith.errors.KithError`), so no parser can fail with IndexError or
struct.error on hostile input.
"""

from __future__ import annotations

import struct
from typing import Final

from kith.errors import KithError

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")

#: Longest relay address kith accepts, in bytes (an onion v3 URL with a port fits easily).
MAX_ADDRESS_LEN: Final = 255


_VISIBLE_ASCII: Final = bytes(range(0x21, 0x7F))


def _visible_ascii(raw: bytes) -> bool:
    """Non-empty and only printable ASCII without space (deleting those leaves nothing)."""
    return bool(raw) and not raw.translate(None, _VISIBLE_ASCII)


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def check_address(address: str) -> bytes:
    """Validate a relay address and return its encoding (printable ASCII, 1..255 bytes).

    Raises ValueError: addresses come from this side's configuration or are checked by the
    decoders before they get here.
    """
    if not isinstance(address, str):
        raise TypeError("relay address must be str")
    try:
        raw = address.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("relay address must be ASCII") from None
    if len(raw) > MAX_ADDRESS_LEN or not _visible_ascii(raw):
        raise ValueError("relay address must be 1..255 printable ASCII characters, no spaces")
    return raw


def str8(address: str) -> bytes:
    """A relay address with its u8 length prefix."""
    raw = check_address(address)
    return bytes((len(raw),)) + raw


class Reader:
    """Reads fields off the front of ``data``; raises ``error(detail)`` on any shortfall."""

    __slots__ = ("_data", "_error", "_pos")

    def __init__(self, data: bytes, error: type[KithError]) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise error("input is not bytes")
        self._data = bytes(data)
        self._pos = 0
        self._error = error

    def fail(self, detail: str) -> KithError:
        return self._error(detail)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.remaining < n:
            raise self._error(f"truncated: {what}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(_U16.unpack(self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(_U64.unpack(self.take(8, what))[0])

    def address(self, what: str) -> str:
        raw = self.take(self.u8(what), what)
        if not _visible_ascii(raw):
            raise self._error(f"{what} is not a printable ASCII relay address")
        return raw.decode("ascii")

    def rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def end(self, what: str) -> None:
        if self.remaining:
            raise self._error(f"{self.remaining} trailing bytes after {what}")
