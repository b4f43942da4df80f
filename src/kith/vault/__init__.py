"""The encrypted local store: key slots (Argon2id), SQLCipher databases, and their API.

Start with :class:`Vault` (``create``/``unlock``) and :class:`UnlockedVault`. The on-disk
format and its reasoning are in docs/protocol/vault.md.
"""

from kith.vault.db import VaultDB
from kith.vault.errors import (
    InvalidPassphrase,
    InvalidRecord,
    KeyFileModified,
    NotAVault,
    PassphraseInUse,
    UnsupportedParams,
    VaultClosed,
    VaultCorrupt,
    VaultError,
    VaultExists,
    WrongPassphrase,
)
from kith.vault.keyfile import Role
from kith.vault.vault import UnlockedVault, Vault

__all__ = [
    "InvalidPassphrase",
    "InvalidRecord",
    "KeyFileModified",
    "NotAVault",
    "PassphraseInUse",
    "Role",
    "UnlockedVault",
    "UnsupportedParams",
    "Vault",
    "VaultClosed",
    "VaultCorrupt",
    "VaultDB",
    "VaultError",
    "VaultExists",
    "WrongPassphrase",
]
