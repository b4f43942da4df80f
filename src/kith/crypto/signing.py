"""Ed25519 signing keys for relay queue authorisation.

A queue's recipient key and sender key are Ed25519 keys generated per queue, so two queues of
one person share no key. Verification failure of any kind raises the opaque
:class:`~kith.errors.DecryptError`: callers learn only "not authorised".
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from kith.errors import DecryptError

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32


class SigningKey:
    """An Ed25519 private key. ``seed`` is the 32-byte secret to keep in the vault."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes):
            raise TypeError("seed must be bytes")
        if len(seed) != SEED_LEN:
            raise ValueError("seed must be 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    @classmethod
    def generate(cls) -> SigningKey:
        key = cls.__new__(cls)
        key._key = Ed25519PrivateKey.generate()
        return key

    @property
    def seed(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return "SigningKey(<secret>)"


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise DecryptError unless ``signature`` is a valid Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise DecryptError
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise DecryptError from None
