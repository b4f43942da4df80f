"""Safety numbers and the per-contact verification state, sans-I/O.

Why: an invitation is a bearer token. Whoever intercepts and replaces it (the QR code swapped in
a photo, the link edited in a message) can sit in the middle of the new relationship. Two people
who meet, or talk over another trusted channel, close that gap by comparing a number that only
matches if each side holds the other's real keys.

The number is 60 digits (12 groups of 5) from :func:`kith.crypto.safety.safety_digest` over both
parties' per-relationship identity keys: each group is 5 digest bytes as a big-endian integer
modulo 100000 (bias below 1e-7). Both sides compute the same digits. Because every
relationship has its own keys, two contacts comparing their numbers with the same person learn
nothing that links them.

Scanning is stronger than reading digits aloud: the QR payload carries the displayer's view of
*both* key sets, so the scanner checks both directions at once::

    KITH:VERIFY/ + base32( version u8 | displayer's keys (64) | displayer's view of peer (64) )

:class:`ContactVerification` is the state a client keeps per contact: UNVERIFIED, VERIFIED, or
CHANGED. A change of the contact's keys is loud: sending is refused
(:class:`KeyChangedError`) until the user acknowledges it, and a verified contact whose keys
change drops back to unverified.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
from dataclasses import dataclass
from typing import Final

from kith.crypto.interfaces import KEY_LEN, IdentityKeys, PairwiseCrypto
from kith.errors import KithError, LocalProtocolError, RemoteProtocolError
from kith.protocol._reader import Reader

VERSION: Final = 1
GROUPS: Final = 12
GROUP_DIGITS: Final = 5
QR_PREFIX: Final = "KITH:VERIFY/"
_QR_LEN: Final = 1 + 4 * KEY_LEN


class SafetyCodeError(RemoteProtocolError):
    """A scanned safety code is malformed or not a kith code."""


class KeyChangedError(LocalProtocolError):
    """The contact's keys changed and the user has not acknowledged it: sending is blocked."""


class VerificationStateError(KithError):
    """Stored verification state is malformed (corrupted local state)."""


def _identity_ok(keys: object) -> IdentityKeys:
    if not isinstance(keys, IdentityKeys):
        raise TypeError("expected IdentityKeys")
    return keys


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The number two people compare, and the QR payload one shows the other."""

    ours: IdentityKeys
    theirs: IdentityKeys
    digits: str

    @classmethod
    def compute(
        cls, ours: IdentityKeys, theirs: IdentityKeys, crypto: PairwiseCrypto
    ) -> SafetyNumber:
        digest = crypto.safety_digest(_identity_ok(ours), _identity_ok(theirs))
        groups = (
            int.from_bytes(digest[i * 5 : i * 5 + 5], "big") % 10**GROUP_DIGITS
            for i in range(GROUPS)
        )
        return cls(ours, theirs, "".join(f"{g:05d}" for g in groups))

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.digits[i : i + GROUP_DIGITS] for i in range(0, len(self.digits), 5))

    def display(self) -> str:
        """Three lines of four groups, the layout both screens show."""
        g = self.groups
        return "\n".join(" ".join(g[i : i + 4]) for i in range(0, GROUPS, 4))

    def matches_typed(self, text: str) -> bool:
        """Compare digits the user typed or read out; spaces and line breaks are ignored."""
        typed = "".join(text.split())
        return hmac.compare_digest(typed.encode("ascii", "replace"), self.digits.encode())

    def qr_payload(self) -> str:
        """What this side's QR code shows (upper-case base32: compact alphanumeric QR mode)."""
        raw = bytes((VERSION,)) + self.ours.to_bytes() + self.theirs.to_bytes()
        return QR_PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=")

    def matches_scanned(self, payload: str) -> bool:
        """True iff the peer's QR shows our keys as theirs and their keys as ours.

        Raises SafetyCodeError if the payload is not a kith safety code at all.
        """
        displayer, their_view_of_us = parse_qr_payload(payload)
        return hmac.compare_digest(
            displayer.to_bytes() + their_view_of_us.to_bytes(),
            self.theirs.to_bytes() + self.ours.to_bytes(),
        )


def parse_qr_payload(payload: str) -> tuple[IdentityKeys, IdentityKeys]:
    """Decode a scanned safety QR: (the displayer's keys, the displayer's view of the peer)."""
    if not isinstance(payload, str) or len(payload) > 512:
        raise SafetyCodeError("not a kith safety code")
    text = payload.strip()
    if text[: len(QR_PREFIX)].upper() != QR_PREFIX:
        raise SafetyCodeError("not a kith safety code")
    body = text[len(QR_PREFIX) :].upper()
    if not body.isascii() or "=" in body:
        raise SafetyCodeError("safety code is not base32")
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise SafetyCodeError("safety code is not base32") from None
    r = Reader(raw, SafetyCodeError)
    version = r.u8("version")
    if version != VERSION:
        raise SafetyCodeError(f"safety code version {version} not understood")
    first = IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "keys"))
    second = IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "keys"))
    r.end("safety code")
    return first, second


class Status(enum.IntEnum):
    UNVERIFIED = 0
    VERIFIED = 1
    CHANGED = 2  #: keys changed and not yet acknowledged: sending blocked


class ContactVerification:
    """Verification state of one contact. The client persists :meth:`to_bytes` in the vault.

    Every method either completes or raises and changes nothing.
    """

    __slots__ = ("_previous", "_status", "_theirs")

    def __init__(self, theirs: IdentityKeys) -> None:
        self._theirs = _identity_ok(theirs)
        self._previous: IdentityKeys | None = None
        self._status = Status.UNVERIFIED

    @property
    def status(self) -> Status:
        return self._status

    @property
    def their_keys(self) -> IdentityKeys:
        return self._theirs

    @property
    def previous_keys(self) -> IdentityKeys | None:
        """While CHANGED: the keys before the change (to show the user what happened)."""
        return self._previous

    @property
    def verified(self) -> bool:
        return self._status is Status.VERIFIED

    def observe(self, keys: IdentityKeys) -> bool:
        """Record the keys the contact now uses. Returns True (and blocks sending) on a change."""
        keys = _identity_ok(keys)
        if keys == self._theirs:
            return False
        if self._status is not Status.CHANGED:
            self._previous = self._theirs
        self._theirs = keys
        self._status = Status.CHANGED
        return True

    def acknowledge_change(self) -> None:
        """The user saw the warning. Sending resumes; the new keys are unverified."""
        if self._status is not Status.CHANGED:
            raise LocalProtocolError("no key change to acknowledge")
        self._status = Status.UNVERIFIED
        self._previous = None

    def require_send_allowed(self) -> None:
        """Raise KeyChangedError while a key change is unacknowledged."""
        if self._status is Status.CHANGED:
            raise KeyChangedError("the contact's keys changed: acknowledge before sending")

    def _mark(self, number: SafetyNumber) -> None:
        if number.theirs != self._theirs:
            raise LocalProtocolError("safety number computed for other keys")
        if self._status is Status.CHANGED:
            raise KeyChangedError("acknowledge the key change before verifying the new keys")
        self._status = Status.VERIFIED

    def verify_typed(self, number: SafetyNumber, text: str) -> bool:
        """Mark verified if the digits the user compared match. Returns whether they did."""
        if not number.matches_typed(text):
            return False
        self._mark(number)
        return True

    def confirm_compared(self, number: SafetyNumber) -> None:
        """The user compared the digits on both screens and says they are equal."""
        self._mark(number)

    def verify_scanned(self, number: SafetyNumber, payload: str) -> bool:
        """Mark verified if the scanned QR matches both directions. Returns whether it did."""
        if not number.matches_scanned(payload):
            return False
        self._mark(number)
        return True

    def unverify(self) -> None:
        if self._status is Status.VERIFIED:
            self._status = Status.UNVERIFIED

    def to_bytes(self) -> bytes:
        """``version u8 | status u8 | their keys 64 | previous keys 64 (CHANGED only)``."""
        previous = self._previous.to_bytes() if self._previous is not None else b""
        return bytes((VERSION, int(self._status))) + self._theirs.to_bytes() + previous

    @classmethod
    def from_bytes(cls, data: bytes) -> ContactVerification:
        r = Reader(data, VerificationStateError)
        if r.u8("version") != VERSION:
            raise VerificationStateError("verification state version not understood")
        raw_status = r.u8("status")
        if raw_status not in {s.value for s in Status}:
            raise VerificationStateError(f"unknown verification status {raw_status}")
        state = cls(IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "keys")))
        state._status = Status(raw_status)
        if state._status is Status.CHANGED:
            state._previous = IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "previous keys"))
        r.end("verification state")
        return state
