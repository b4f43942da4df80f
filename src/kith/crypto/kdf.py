"""Key derivation recipes: Argon2id for passphrases, HKDF-SHA256 for sub-keys, SHA-256 digests.

Why these three and nothing else:

- **Argon2id** turns a human passphrase into a wrapping key. It is memory-hard, so a captor
  with a GPU farm pays for memory on every guess, not only for arithmetic. Parameters are
  passed in explicitly (the vault keeps them in one table, ``kith.vault.params``), and the
  output length is fixed at 32 bytes.
- **HKDF-SHA256** splits one random data key into independent keys for independent uses (the
  SQLCipher page key, the Olm/Megolm pickle key), so a key leaked from one component (for
  example a pickle key left in some library's memory) says nothing about another.
- **SHA-256** fingerprints a file whose integrity is checked against a copy of the digest
  kept inside authenticated, encrypted storage.

Wrong Python types raise :class:`TypeError`, wrong sizes :class:`ValueError`; these are
programming errors, never attacker-controlled outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_LEN: Final = 32
SALT_LEN: Final = 16
DIGEST_LEN: Final = 32

#: Smallest memory cost Argon2 itself allows for one lane is 8 KiB; we refuse anything below
#: 1 MiB because no caller has a reason to go lower, and a typo there would be a disaster.
MIN_MEMORY_KIB: Final = 1024
#: 4 GiB: no device that runs kith can afford more, and a corrupted table entry must not be
#: able to make the process allocate unbounded memory.
MAX_MEMORY_KIB: Final = 4 * 1024 * 1024
MAX_TIME_COST: Final = 64
MAX_PARALLELISM: Final = 16
MAX_PASSPHRASE_LEN: Final = 4096


@dataclass(frozen=True, slots=True)
class Argon2idParams:
    """Cost parameters of one Argon2id derivation (RFC 9106 names in brackets).

    ``memory_kib`` [m] is the memory in KiB, ``time_cost`` [t] the number of passes,
    ``parallelism`` [p] the number of lanes. Output is always 32 bytes, version 0x13.
    """

    memory_kib: int
    time_cost: int
    parallelism: int = 1

    def __post_init__(self) -> None:
        for name in ("memory_kib", "time_cost", "parallelism"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int")
        if not MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB:
            raise ValueError("memory_kib out of range")
        if not 1 <= self.time_cost <= MAX_TIME_COST:
            raise ValueError("time_cost out of range")
        if not 1 <= self.parallelism <= MAX_PARALLELISM:
            raise ValueError("parallelism out of range")
        if self.memory_kib < 8 * self.parallelism:
            raise ValueError("memory_kib must be at least 8 KiB per lane")

    @property
    def work(self) -> int:
        """Relative cost (memory x passes); derivation time is close to linear in it."""
        return self.memory_kib * self.time_cost


def argon2id(passphrase: bytes, salt: bytes, params: Argon2idParams) -> bytes:
    """Derive a 32-byte key from ``passphrase`` and a 16-byte ``salt`` with Argon2id."""
    if not isinstance(passphrase, bytes) or not isinstance(salt, bytes):
        raise TypeError("passphrase and salt must be bytes")
    if not isinstance(params, Argon2idParams):
        raise TypeError("params must be Argon2idParams")
    if len(salt) != SALT_LEN:
        raise ValueError("salt must be 16 bytes")
    if len(passphrase) > MAX_PASSPHRASE_LEN:
        raise ValueError("passphrase too long")
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_LEN,
        type=Type.ID,
        version=19,
    )


def hkdf_sha256(key: bytes | bytearray, info: bytes, length: int = KEY_LEN) -> bytes:
    """Derive ``length`` bytes for the purpose named by ``info`` from a uniformly random key.

    No salt: the input is already a uniformly random 32-byte key (RFC 5869 section 3.1 allows
    omitting the salt then); ``info`` carries a distinct label per use so outputs are
    independent.
    """
    if not isinstance(key, bytes | bytearray) or not isinstance(info, bytes):
        raise TypeError("key and info must be bytes")
    if len(key) != KEY_LEN:
        raise ValueError("key must be 32 bytes")
    if not 1 <= length <= 255 * 32:
        raise ValueError("length out of range")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data`` (32 bytes)."""
    if not isinstance(data, bytes | bytearray):
        raise TypeError("data must be bytes")
    digest = hashes.Hash(hashes.SHA256())
    digest.update(bytes(data))
    return digest.finalize()
