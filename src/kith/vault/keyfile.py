"""The vault key file: a fixed number of fixed-size key slots. Pure: bytes in, bytes out.

Theory of operation
-------------------
The key file is magic-free; every byte of it is either random or ciphertext::

    header u8 | slot[0] | slot[1] | ... | slot[n-1]          (1 + n * 128 bytes)

    header  = random high nibble | cost level (low nibble, index into params.COST_TABLE)
    slot    = salt(16) | nonce(12) | ChaCha20-Poly1305(wrap_key, grant, aad)(84 + 16)
    wrap_key = Argon2id(passphrase, salt, COST_TABLE[level])
    aad     = "kith-vault-slot" 0x01 | level | index | n

A used slot seals a :class:`Grant`; an unused slot is 128 random bytes. Without the
passphrase the two cannot be told apart (salt and nonce are random, the rest is AEAD output).
The number of slots follows from the file size, so no count is stored either.

The grant (the authenticated plaintext, 84 bytes) carries the format version::

    version u8 (=1) | role u8 | profile u8 | granted u8 (bit p: key for profile p present)
    | managed u16 (bit i: slot i is managed by this grant's holder) | reserved 14 (zero)
    | key[0] 32 | key[1] 32          (keys not granted are zero)

:func:`scan` is the heart of unlocking: it derives a key for *every* slot with the same
parameters and tries each one, never stopping early, so neither time nor I/O depends on which
slot matched or on how many slots are in use.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kith.crypto import keywrap
from kith.crypto.kdf import SALT_LEN, Argon2idParams
from kith.errors import DecryptError
from kith.vault.errors import NotAVault, VaultCorrupt
from kith.vault.params import COST_TABLE

FORMAT_VERSION: Final = 1
HEADER_LEN: Final = 1
NONCE_LEN: Final = keywrap.NONCE_LEN
KEY_LEN: Final = 32
PROFILES: Final = 2
GRANT_LEN: Final = 84
SLOT_LEN: Final = SALT_LEN + NONCE_LEN + GRANT_LEN + keywrap.TAG_LEN  # 128
MIN_SLOTS: Final = 1
MAX_SLOTS: Final = 16  # the ``managed`` bitmask has 16 bits
DEFAULT_SLOTS: Final = 8
LEVEL_MASK: Final = 0x0F

_GRANT_HEAD = struct.Struct(">BBBBH14x")
_AAD_LABEL: Final = b"kith-vault-slot\x01"

Rng = Callable[[int], bytes]
Kdf = Callable[[bytes, bytes, Argon2idParams], bytes]


class Role(enum.IntEnum):
    """What a passphrase does. Only REAL is acted on today; the others are reserved so that
    stage 5 (duress and panic passphrases) needs no change to the file format."""

    REAL = 1  #: opens ``profile`` normally
    DURESS_COVERT = 2  #: opens ``profile`` (the real one) and flags everything sent
    DURESS_DECOY = 3  #: opens a decoy ``profile``; the holder destroys the real slots
    PANIC = 4  #: opens nothing; the holder destroys every slot


@dataclass(frozen=True, slots=True)
class Grant:
    """What one slot gives the holder of its passphrase."""

    role: Role
    profile: int
    keys: tuple[bytes | None, ...]
    managed: int

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise TypeError("role must be a Role")
        if not 0 <= self.profile < PROFILES:
            raise ValueError("profile out of range")
        if len(self.keys) != PROFILES:
            raise ValueError(f"keys must have {PROFILES} entries")
        for key in self.keys:
            if key is not None and (not isinstance(key, bytes) or len(key) != KEY_LEN):
                raise ValueError("each key must be 32 bytes or None")
        if not 0 <= self.managed < 1 << MAX_SLOTS:
            raise ValueError("managed must be a 16-bit mask")
        if self.role is not Role.PANIC and self.keys[self.profile] is None:
            raise ValueError("a grant must carry the key of the profile it opens")

    @property
    def data_key(self) -> bytes:
        """The data key of the profile this grant opens."""
        key = self.keys[self.profile]
        if key is None:
            raise ValueError("this grant opens no profile")
        return key

    def __repr__(self) -> str:
        return "Grant(<secret>)"


def encode_grant(grant: Grant) -> bytes:
    granted = sum(1 << i for i, key in enumerate(grant.keys) if key is not None)
    head = _GRANT_HEAD.pack(FORMAT_VERSION, grant.role, grant.profile, granted, grant.managed)
    return head + b"".join(key if key is not None else bytes(KEY_LEN) for key in grant.keys)


def decode_grant(data: bytes) -> Grant:
    """Parse an authenticated grant. A grant that authenticates but does not parse comes from
    a newer format or a bug; it raises :class:`VaultCorrupt` (never a silent guess)."""
    if len(data) != GRANT_LEN:
        raise VaultCorrupt("key slot has the wrong length")
    version, role, profile, granted, managed = _GRANT_HEAD.unpack_from(data)
    if version != FORMAT_VERSION:
        raise VaultCorrupt(f"key slot format version {version} is not supported")
    if data[_GRANT_HEAD.size - 14 : _GRANT_HEAD.size] != bytes(14):
        raise VaultCorrupt("key slot has non-zero reserved bytes")
    if granted >> PROFILES:
        raise VaultCorrupt("key slot grants an unknown profile")
    keys: list[bytes | None] = []
    for i in range(PROFILES):
        start = _GRANT_HEAD.size + i * KEY_LEN
        key = data[start : start + KEY_LEN]
        if granted >> i & 1:
            keys.append(key)
        elif key != bytes(KEY_LEN):
            raise VaultCorrupt("key slot carries a key it does not grant")
        else:
            keys.append(None)
    try:
        return Grant(Role(role), profile, tuple(keys), managed)
    except ValueError:
        raise VaultCorrupt("key slot contents are inconsistent") from None


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A decoded key file: the header byte and ``n`` opaque slots."""

    header: int
    slots: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.header <= 0xFF:
            raise ValueError("header must be a byte")
        if not MIN_SLOTS <= len(self.slots) <= MAX_SLOTS:
            raise ValueError("slot count out of range")
        if any(len(slot) != SLOT_LEN for slot in self.slots):
            raise ValueError("every slot must be 128 bytes")

    @property
    def level(self) -> int:
        return self.header & LEVEL_MASK

    @property
    def params(self) -> Argon2idParams:
        return COST_TABLE[self.level]

    @property
    def n(self) -> int:
        return len(self.slots)


def keyfile_size(n: int) -> int:
    return HEADER_LEN + n * SLOT_LEN


def encode_keyfile(keyfile: KeyFile) -> bytes:
    return bytes([keyfile.header]) + b"".join(keyfile.slots)


def decode_keyfile(data: bytes) -> KeyFile:
    """Split a key file. Any bytes of a valid length decode: that is the point of the format."""
    if not isinstance(data, bytes):
        raise TypeError("data must be bytes")
    body = len(data) - HEADER_LEN
    n, rest = divmod(body, SLOT_LEN)
    if body < 0 or rest or not MIN_SLOTS <= n <= MAX_SLOTS:
        raise NotAVault("key file has an impossible size")
    slots = tuple(
        data[HEADER_LEN + i * SLOT_LEN : HEADER_LEN + (i + 1) * SLOT_LEN] for i in range(n)
    )
    return KeyFile(data[0], slots)


def make_header(level: int, rng: Rng) -> int:
    if not 0 <= level <= LEVEL_MASK:
        raise ValueError("level out of range")
    return (rng(1)[0] & ~LEVEL_MASK & 0xFF) | level


def slot_aad(level: int, index: int, n: int) -> bytes:
    """Binds a slot to its place: a slot copied to another index or file of another size, or
    re-labelled with another cost level, no longer opens."""
    return _AAD_LABEL + bytes([level, index, n])


def random_slot(rng: Rng) -> bytes:
    slot = rng(SLOT_LEN)
    if len(slot) != SLOT_LEN:
        raise ValueError("rng returned the wrong number of bytes")
    return slot


def seal_slot(
    grant: Grant,
    passphrase: bytes,
    *,
    level: int,
    index: int,
    n: int,
    rng: Rng,
    kdf: Kdf,
) -> bytes:
    """Seal ``grant`` under ``passphrase`` into one slot, with a fresh salt and nonce."""
    if not 0 <= index < n <= MAX_SLOTS:
        raise ValueError("slot index out of range")
    salt, nonce = rng(SALT_LEN), rng(NONCE_LEN)
    if len(salt) != SALT_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("rng returned the wrong number of bytes")
    wrap_key = kdf(passphrase, salt, COST_TABLE[level])
    sealed = keywrap.wrap(wrap_key, nonce, encode_grant(grant), slot_aad(level, index, n))
    return salt + nonce + sealed


def _try_slot(keyfile: KeyFile, index: int, passphrase: bytes, kdf: Kdf) -> bytes | None:
    slot = keyfile.slots[index]
    salt, nonce, sealed = (
        slot[:SALT_LEN],
        slot[SALT_LEN : SALT_LEN + NONCE_LEN],
        slot[SALT_LEN + NONCE_LEN :],
    )
    wrap_key = kdf(passphrase, salt, keyfile.params)
    try:
        return keywrap.unwrap(wrap_key, nonce, sealed, slot_aad(keyfile.level, index, keyfile.n))
    except DecryptError:
        return None


def scan(keyfile: KeyFile, passphrase: bytes, kdf: Kdf) -> tuple[int, Grant] | None:
    """Try ``passphrase`` on every slot; return the first slot that opens and its grant.

    Constant work: one derivation and one AEAD attempt per slot, for every slot, whatever
    matches. Early exit would let a stopwatch reveal the index of the matching slot and,
    across several passphrases (real, duress), how many slots are in use.
    """
    found: tuple[int, bytes] | None = None
    for index in range(keyfile.n):
        opened = _try_slot(keyfile, index, passphrase, kdf)
        if opened is not None and found is None:
            found = (index, opened)
    if found is None:
        return None
    return found[0], decode_grant(found[1])
