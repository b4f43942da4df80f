"""The crypto facade as the protocol layer sees it: plain types and interfaces, no crypto library.

Why this module exists: the protocol package is sans-I/O *and* sans-crypto-library (a layer
test imports every protocol module and fails if ``cryptography`` or ``vodozemac`` got loaded).
Its state machines still need Olm sessions, signatures and sealed state, so they are written
against the small interfaces below, and the caller hands them the real implementation
(:data:`kith.crypto.olm.CRYPTO`). Tests use the same real implementation; the indirection only
keeps the import graph honest, it is not a place to plug in other cryptography.

Everything here is importable without a crypto library: value types, the Olm size arithmetic
(so codecs can size padding without a live session), and typing protocols.

Contract every implementation keeps:

- every authentication or decryption failure raises :class:`kith.errors.DecryptError`, with no
  detail, whatever the underlying library said;
- a failed ``decrypt``/``try_decrypt``/``create_inbound`` leaves the object unchanged;
- ``try_decrypt`` and ``create_inbound`` return the advanced state instead of changing the
  object, so a caller can run its own checks and adopt the new state only if they pass.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

#: Length of every public key kith handles (Ed25519 and Curve25519 alike).
KEY_LEN: Final = 32
#: Length of an Ed25519 signature.
SIGNATURE_LEN: Final = 64
#: Length of the key callers give to ``pickle``/``seal``: the vault supplies it.
PICKLE_KEY_LEN: Final = 32


class OlmKind(enum.IntEnum):
    """The two Olm message types, numbered as Olm numbers them.

    A session sends ``PREKEY`` messages until it has received one message from its peer; they
    carry what the peer needs to create the inbound session.
    """

    PREKEY = 0
    NORMAL = 1


@dataclass(frozen=True, slots=True)
class IdentityKeys:
    """One relationship's public identity: an Ed25519 signing key and a Curve25519 Olm key.

    kith creates a fresh pair for every relationship (see docs/protocol/pairwise.md), so this is
    never "who someone is", only "who they are to one contact".
    """

    ed25519: bytes
    curve25519: bytes

    def __post_init__(self) -> None:
        for name in ("ed25519", "curve25519"):
            value = getattr(self, name)
            if not isinstance(value, bytes):
                raise TypeError(f"{name} must be bytes")
            if len(value) != KEY_LEN:
                raise ValueError(f"{name} must be {KEY_LEN} bytes, got {len(value)}")

    def to_bytes(self) -> bytes:
        """``ed25519 || curve25519``, 64 bytes: the canonical encoding used in every format."""
        return self.ed25519 + self.curve25519

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityKeys:
        if len(data) != 2 * KEY_LEN:
            raise ValueError(f"identity keys are {2 * KEY_LEN} bytes, got {len(data)}")
        return cls(bytes(data[:KEY_LEN]), bytes(data[KEY_LEN:]))


# --------------------------------------------------------------------------- Olm size arithmetic
#
# vodozemac 0.10 (Olm v1, truncated MAC) encodes a normal message as
#   version(1) | 0x0A 0x20 ratchet_key(32) | 0x10 varint(chain_index) |
#   0x22 varint(len) ciphertext | mac(8)
# with AES-256-CBC + PKCS#7, so ciphertext = 16 * (plaintext // 16 + 1). A pre-key message is
#   version(1) | 0x0A 0x20 one_time_key | 0x12 0x20 base_key | 0x1A 0x20 identity_key |
#   0x22 varint(len) normal_message
# tests/unit/crypto/test_olm.py checks these formulas against real vodozemac output.

_MAX_VARINT_LEN: Final = 10  # a u64 chain index, worst case


def _varint_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def olm_message_len(plaintext_len: int, kind: OlmKind, chain_index: int | None = None) -> int:
    """Exact Olm message length for ``plaintext_len`` bytes at ``chain_index``.

    ``chain_index=None`` gives the worst case (a 10-byte index varint), which is what padding
    must plan for since the index is not known before encrypting.
    """
    if plaintext_len < 0:
        raise ValueError("plaintext_len must not be negative")
    index_len = _MAX_VARINT_LEN if chain_index is None else _varint_len(chain_index)
    ct = 16 * (plaintext_len // 16 + 1)
    normal = 1 + (2 + KEY_LEN) + (1 + index_len) + (1 + _varint_len(ct)) + ct + 8
    if kind is OlmKind.NORMAL:
        return normal
    return 1 + 3 * (2 + KEY_LEN) + 1 + _varint_len(normal) + normal


def max_olm_plaintext(budget: int) -> int:
    """Largest plaintext whose worst-case (pre-key) Olm message fits in ``budget`` bytes.

    Raises ValueError if not even an empty plaintext fits.
    """
    if olm_message_len(0, OlmKind.PREKEY) > budget:
        raise ValueError(f"an Olm message cannot fit in {budget} bytes")
    # The length is monotonic in the plaintext length and the overhead is at least that of an
    # empty plaintext less one AES block: start from that upper bound and step down.
    plaintext = budget - olm_message_len(0, OlmKind.PREKEY) + 16
    while olm_message_len(plaintext, OlmKind.PREKEY) > budget:
        plaintext -= 1
    return plaintext


# --------------------------------------------------------------------------- interfaces


class OlmSession(Protocol):
    """One Olm double-ratchet session with one peer."""

    def encrypt(self, plaintext: bytes) -> tuple[OlmKind, bytes]:
        """Encrypt and advance the sending chain. Returns the message type and its bytes."""
        ...

    def try_decrypt(self, kind: OlmKind, ciphertext: bytes) -> tuple[OlmSession, bytes]:
        """Decrypt on a copy: returns (advanced copy, plaintext). ``self`` never changes."""
        ...

    def decrypt(self, kind: OlmKind, ciphertext: bytes) -> bytes:
        """Decrypt in place; DecryptError on any failure, and then the session is unchanged."""
        ...

    def copy(self) -> OlmSession:
        """An independent copy (for try-then-commit)."""
        ...

    def pickle(self, pickle_key: bytes) -> bytes:
        """The session state encrypted under ``pickle_key`` (32 bytes)."""
        ...


class OlmAccount(Protocol):
    """The secret half of one relationship's :class:`IdentityKeys`."""

    @property
    def identity_keys(self) -> IdentityKeys: ...

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature by this identity (verifiable with any Ed25519 implementation)."""
        ...

    def new_one_time_key(self) -> bytes:
        """Create one Curve25519 one-time key, mark it published, return its public bytes."""
        ...

    def create_outbound(self, their_curve25519: bytes, one_time_key: bytes) -> OlmSession:
        """Start a session to a peer from their identity key and one of their one-time keys."""
        ...

    def create_inbound(
        self, their_curve25519: bytes, prekey_message: bytes
    ) -> tuple[OlmAccount, OlmSession, bytes]:
        """Answer a pre-key message on a copy of the account. Returns (the account without the
        one-time key used, the session, the plaintext); ``self`` never changes."""
        ...

    def copy(self) -> OlmAccount: ...

    def pickle(self, pickle_key: bytes) -> bytes: ...


class PairwiseCrypto(Protocol):
    """Everything the pairwise protocol needs from crypto, in one object passed by the caller."""

    def new_account(self) -> OlmAccount:
        """A fresh identity for one new relationship."""
        ...

    def load_account(self, data: bytes, pickle_key: bytes) -> OlmAccount: ...

    def load_session(self, data: bytes, pickle_key: bytes) -> OlmSession: ...

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> None:
        """Raise DecryptError unless ``signature`` is a valid Ed25519 signature."""
        ...

    def signing_public_key(self, seed: bytes) -> bytes:
        """The Ed25519 public key of a 32-byte seed (queue authorisation keys)."""
        ...

    def seal(self, key: bytes, label: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate state at rest under a 32-byte key, bound to ``label``."""
        ...

    def open(self, key: bytes, label: bytes, blob: bytes) -> bytes:
        """Reverse :meth:`seal`; DecryptError on a wrong key, label or any tampering."""
        ...

    def derive_key(self, key: bytes, label: bytes) -> bytes:
        """A 32-byte subkey of ``key`` for one purpose, so one vault key serves many."""
        ...

    def safety_digest(self, first: IdentityKeys, second: IdentityKeys) -> bytes:
        """64 bytes committing to both parties' identity keys, independent of their order."""
        ...
