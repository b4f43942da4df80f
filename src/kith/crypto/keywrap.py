"""Key wrapping: seal a short secret (a vault slot's contents) under a 32-byte key.

The recipe is ChaCha20-Poly1305 (RFC 8439) with a caller-supplied 12-byte nonce and
associated data. ChaCha20-Poly1305 because it is fast in software on every phone CPU and
constant-time without AES instructions; a plain AEAD (rather than a deterministic key-wrap
mode) because in the vault every wrapping key is fresh: it is derived from a fresh random salt
on every seal, so a key is used for exactly one message and the nonce only adds defence in depth
against a broken random source.

The nonce is a parameter, not drawn here, so this module stays free of hidden randomness and
tests can reproduce known answers.

Every failure to open (wrong key, wrong nonce, wrong associated data, a flipped bit, a short
ciphertext) raises the one opaque :class:`~kith.errors.DecryptError`.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from kith.errors import DecryptError

KEY_LEN: Final = 32
NONCE_LEN: Final = 12
TAG_LEN: Final = 16


def _check(key: bytes | bytearray, nonce: bytes, data: bytes, aad: bytes) -> None:
    if not isinstance(key, bytes | bytearray):
        raise TypeError("key must be bytes")
    if not all(isinstance(x, bytes) for x in (nonce, data, aad)):
        raise TypeError("nonce, data and aad must be bytes")
    if len(key) != KEY_LEN:
        raise ValueError("key must be 32 bytes")
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")


def wrap(key: bytes | bytearray, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext``; returns ciphertext || 16-byte tag."""
    _check(key, nonce, plaintext, aad)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def unwrap(key: bytes | bytearray, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Authenticate and decrypt; raises :class:`DecryptError` on any failure."""
    _check(key, nonce, ciphertext, aad)
    if len(ciphertext) < TAG_LEN:
        raise DecryptError
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptError from None
