"""Errors the vault raises. All derive from :class:`VaultError`, a :class:`~kith.errors.StoreError`.

:class:`WrongPassphrase` is deliberately uninformative: whether no slot matched, the slot that
would have matched is damaged, or the passphrase is simply wrong, the caller (and whoever is
watching the screen) learns one thing only. Errors about malformed *arguments* also derive from
``ValueError``/``TypeError`` so that both kith's and Python's conventions catch them.
"""

from __future__ import annotations

from kith.errors import StoreError


class VaultError(StoreError):
    """Base of every vault error."""


class WrongPassphrase(VaultError):
    """The passphrase opens nothing in this vault. Carries no detail, on purpose."""

    def __init__(self) -> None:
        super().__init__("wrong passphrase")


class InvalidPassphrase(VaultError, ValueError):
    """The passphrase is not acceptable as a new passphrase (empty, too long, not text)."""


class InvalidRecord(VaultError, ValueError):
    """A key, name or value handed to the vault database has the wrong type or size."""


class UnsupportedParams(VaultError, ValueError):
    """The Argon2id parameters are not an entry of the vault's cost table, or are for tests."""


class NotAVault(VaultError):
    """The path holds no vault (missing key file, or a key file of impossible size)."""


class VaultExists(VaultError):
    """Refusing to create a vault where something already exists."""


class VaultCorrupt(VaultError):
    """A key slot opened but the database it names does not (damaged or replaced files)."""


class KeyFileModified(VaultError):
    """The key file differs from the copy of its digest kept inside the encrypted database.

    Some byte outside the slot that matched was changed since this vault last wrote the
    file: bit rot, or someone edited the file. The passphrase itself was right.
    """


class PassphraseInUse(VaultError, ValueError):
    """The new passphrase already opens another slot of this vault."""


class VaultClosed(VaultError):
    """The unlocked vault was closed; its keys are gone."""
