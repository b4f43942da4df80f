"""One-time invitations: the only way two people start talking in kith.

Theory of operation
-------------------
An invitation is a small signed record that the inviter shows as a QR code or sends as a
``kith:`` link through some other channel (in person, ideally). It carries everything the
acceptor needs to reach the inviter and start an Olm session, and nothing that names anyone:

- the relay address and the *sender id* of a queue the inviter created for this invitation;
- the relay's block size (so the first message is padded right before connecting);
- the inviter's identity keys *for this relationship only* (Ed25519, Curve25519);
- one Curve25519 one-time key;
- an invitation id (16 random bytes) and an expiry time;
- an Ed25519 signature by the identity key over a domain-separated encoding of all the above.

Olm itself does not sign one-time keys. Without the signature, whoever relays the invitation
could swap the one-time key (or the queue) for their own and sit in the middle; with it, the
acceptor refuses any invitation whose fields were not all chosen by the holder of the identity
key. (Swapping the identity key too is caught only by comparing safety numbers: the invitation
is a bearer token, so its integrity in transit is the user's to protect.)

The handshake that follows is in :mod:`kith.protocol.pairwise`; the byte layout and examples
are in docs/protocol/pairwise.md.

Errors: malformed bytes or links raise :class:`InvitationError`; an expired invitation raises
:class:`InvitationExpired`; a second use raises :class:`InvitationUsed` (on the inviter's side);
a bad signature raises the opaque :class:`~kith.errors.DecryptError`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from kith.crypto.interfaces import KEY_LEN, SIGNATURE_LEN, IdentityKeys, PairwiseCrypto
from kith.errors import RemoteProtocolError
from kith.protocol._reader import Reader, check_address, str8, u32, u64
from kith.protocol.envelope import MAX_PAIRWISE_BLOCK, MIN_PAIRWISE_BLOCK

VERSION: Final = 1
ID_LEN: Final = 16
QUEUE_ID_LEN: Final = 16
DAY_MS: Final = 24 * 3600 * 1000
#: How long an invitation stays valid unless the inviter chooses otherwise.
DEFAULT_TTL_MS: Final = 7 * DAY_MS
#: The longest validity an inviter may choose: a forgotten QR code must die on its own.
MAX_TTL_MS: Final = 30 * DAY_MS

URI_PREFIX: Final = "kith:invite/"
#: Longest link text the parser looks at (an invitation with a 255-byte address is ~750).
MAX_URI_LEN: Final = 1024

_SIGN_LABEL: Final = b"kith-invitation-v1\x00"


class InvitationError(RemoteProtocolError):
    """An invitation (bytes or link) is malformed, or cannot be used."""


class InvitationExpired(InvitationError):
    """The invitation's expiry time has passed."""


class InvitationUsed(InvitationError):
    """The invitation was already accepted once; invitations work once."""


@dataclass(frozen=True, slots=True)
class Invitation:
    """A signed invitation. Construct with :meth:`from_bytes`/:meth:`from_uri` (untrusted) or
    through :func:`kith.protocol.pairwise.create_invitation` (which signs it)."""

    invitation_id: bytes
    expires_at_ms: int
    relay: str
    sender_id: bytes
    block_size: int
    identity: IdentityKeys
    one_time_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_address(self.relay)
        for name, value, length in (
            ("invitation_id", self.invitation_id, ID_LEN),
            ("sender_id", self.sender_id, QUEUE_ID_LEN),
            ("one_time_key", self.one_time_key, KEY_LEN),
            ("signature", self.signature, SIGNATURE_LEN),
        ):
            if not isinstance(value, bytes) or len(value) != length:
                raise ValueError(f"{name} must be {length} bytes")
        if not 0 <= self.expires_at_ms < 1 << 64:
            raise ValueError("expires_at_ms must fit in 64 bits")
        if not MIN_PAIRWISE_BLOCK <= self.block_size <= MAX_PAIRWISE_BLOCK:
            raise ValueError("block_size out of range")

    # ----------------------------------------------------------------- encoding

    def signed_part(self) -> bytes:
        """Every field but the signature, in wire order."""
        return (
            bytes((VERSION,))
            + self.invitation_id
            + u64(self.expires_at_ms)
            + str8(self.relay)
            + self.sender_id
            + u32(self.block_size)
            + self.identity.to_bytes()
            + self.one_time_key
        )

    def signing_payload(self) -> bytes:
        """The exact bytes the identity key signs: label, then :meth:`signed_part`."""
        return _SIGN_LABEL + self.signed_part()

    def to_bytes(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Invitation:
        """Parse (does not verify: call :meth:`verify`). Raises InvitationError only."""
        r = Reader(data, InvitationError)
        version = r.u8("version")
        if version != VERSION:
            raise InvitationError(f"invitation version {version} not spoken")
        invitation_id = r.take(ID_LEN, "invitation id")
        expires_at = r.u64("expiry")
        relay = r.address("relay address")
        sender_id = r.take(QUEUE_ID_LEN, "sender id")
        block_size = r.u32("block size")
        if not MIN_PAIRWISE_BLOCK <= block_size <= MAX_PAIRWISE_BLOCK:
            raise InvitationError(f"block size {block_size} out of range")
        identity = IdentityKeys.from_bytes(r.take(2 * KEY_LEN, "identity keys"))
        one_time_key = r.take(KEY_LEN, "one-time key")
        signature = r.take(SIGNATURE_LEN, "signature")
        r.end("invitation")
        return cls(
            invitation_id,
            expires_at,
            relay,
            sender_id,
            block_size,
            identity,
            one_time_key,
            signature,
        )

    def to_uri(self) -> str:
        """``kith:invite/`` + unpadded base32 (upper case, so a QR code can use its compact
        alphanumeric mode)."""
        return URI_PREFIX + base64.b32encode(self.to_bytes()).decode("ascii").rstrip("=")

    @classmethod
    def from_uri(cls, text: str) -> Invitation:
        """Parse a link, case-insensitively and ignoring surrounding whitespace."""
        if not isinstance(text, str):
            raise InvitationError("link is not text")
        if len(text) > MAX_URI_LEN:
            raise InvitationError("link too long")
        text = text.strip()
        if text[: len(URI_PREFIX)].lower() != URI_PREFIX:
            raise InvitationError("not a kith invitation link")
        payload = text[len(URI_PREFIX) :].upper()
        if not payload.isascii() or "=" in payload:
            raise InvitationError("invitation link is not base32")
        try:
            raw = base64.b32decode(payload + "=" * (-len(payload) % 8))
        except (binascii.Error, ValueError):
            raise InvitationError("invitation link is not base32") from None
        return cls.from_bytes(raw)

    def qr_text(self) -> str:
        """What the QR code encodes: the link in upper case (alphanumeric mode, smaller code)."""
        return self.to_uri().upper()

    # ----------------------------------------------------------------- checks

    def check_unexpired(self, now_ms: int) -> None:
        if now_ms >= self.expires_at_ms:
            raise InvitationExpired("the invitation has expired")

    def verify(self, now_ms: int, crypto: PairwiseCrypto) -> None:
        """Refuse an expired invitation (InvitationExpired) or a forged one (DecryptError)."""
        self.check_unexpired(now_ms)
        crypto.verify(self.identity.ed25519, self.signature, self.signing_payload())
