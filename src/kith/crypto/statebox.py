"""Sealing protocol state at rest: one recipe, so every state blob is encrypted the same way.

Sessions, invitations and contact state leave memory only as sealed blobs that the vault stores.
The vault hands over a 32-byte key; this module turns it into a fresh ChaCha20-Poly1305 key per
blob with HKDF-SHA256 over a random 32-byte salt, so nonces can never repeat no matter how many
blobs one key seals (the AEAD nonce is then fixed at zero: each derived key is used once).

The ``label`` names what the blob is (``b"pairwise-channel"``...) and is authenticated, so a blob
of one kind cannot be passed off as another. Every failure to open raises the opaque
:class:`~kith.errors.DecryptError`.

Blob layout: ``version u8 (1) | salt 32 | ciphertext | tag 16``.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kith.errors import DecryptError

VERSION: Final = 1
KEY_LEN: Final = 32
SALT_LEN: Final = 32
TAG_LEN: Final = 16
OVERHEAD: Final = 1 + SALT_LEN + TAG_LEN

_SEAL_INFO: Final = b"kith-statebox-v1\x00"
_DERIVE_INFO: Final = b"kith-subkey-v1\x00"
_ZERO_NONCE: Final = bytes(12)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise TypeError("key must be bytes")
    if len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes")


def _blob_key(key: bytes, salt: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_LEN, salt, _SEAL_INFO + label).derive(key)


def derive_key(key: bytes, label: bytes) -> bytes:
    """A subkey of ``key`` for the purpose named by ``label`` (HKDF-SHA256, no salt)."""
    _check_key(key)
    return HKDF(hashes.SHA256(), KEY_LEN, None, _DERIVE_INFO + label).derive(key)


def seal(key: bytes, label: bytes, plaintext: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` under ``key``, bound to ``label``."""
    _check_key(key)
    salt = os.urandom(SALT_LEN)
    aad = bytes((VERSION,)) + label
    sealed = ChaCha20Poly1305(_blob_key(key, salt, label)).encrypt(_ZERO_NONCE, plaintext, aad)
    return bytes((VERSION,)) + salt + sealed


def open_sealed(key: bytes, label: bytes, blob: bytes) -> bytes:
    """Return the plaintext of a :func:`seal` blob; DecryptError if anything does not match."""
    _check_key(key)
    if not isinstance(blob, bytes) or len(blob) < OVERHEAD or blob[0] != VERSION:
        raise DecryptError
    salt = blob[1 : 1 + SALT_LEN]
    aad = bytes((VERSION,)) + label
    try:
        return ChaCha20Poly1305(_blob_key(key, salt, label)).decrypt(
            _ZERO_NONCE, blob[1 + SALT_LEN :], aad
        )
    except InvalidTag:
        raise DecryptError from None
