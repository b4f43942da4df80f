"""The Olm facade: per-relationship accounts and double-ratchet sessions, backed by vodozemac.

kith never uses vodozemac directly outside this module. The facade exists to keep three promises
that vodozemac's own API does not make by itself:

- **One opaque error.** Whatever vodozemac raises while decoding, decrypting, creating a session
  or unpickling (wrong key, flipped bit, unknown one-time key, bad base64...) becomes
  :class:`~kith.errors.DecryptError`. No caller can turn the facade into an oracle.
- **Bytes in, bytes out.** Keys and signatures are raw bytes (32 and 64), never vodozemac's
  unpadded base64 strings, so every kith format is binary and fixed-size.
- **Try, then commit.** :meth:`Session.try_decrypt` and :meth:`Account.create_inbound` work on
  an independent copy (pickled and restored under a process-local random key) and return it,
  so the protocol layer can run its own checks on the result and adopt it only if everything
  passed. A failure never touches the live state (vodozemac alone does not promise that).

Per-relationship identity: an :class:`Account` is created for *one* contact and never reused
(``docs/protocol/pairwise.md`` explains why). vodozemac does not sign one-time keys; the
protocol signs them with :meth:`Account.sign` and verifies with :func:`verify` (plain Ed25519,
interoperable with :mod:`kith.crypto.signing`).
"""

from __future__ import annotations

import base64
import os
from typing import Final

import vodozemac as vz

from kith.crypto import signing, statebox
from kith.crypto.interfaces import (
    KEY_LEN,
    PICKLE_KEY_LEN,
    IdentityKeys,
    OlmKind,
)
from kith.crypto.safety import safety_digest
from kith.errors import DecryptError

#: vodozemac raises these (all ValueError subclasses) for bad input of any kind.
_VZ_ERRORS: Final = (ValueError, TypeError)

#: Key for in-memory copies only. Never written anywhere; a new one per process.
_COPY_KEY: Final = os.urandom(PICKLE_KEY_LEN)


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _check_pickle_key(pickle_key: bytes) -> None:
    if not isinstance(pickle_key, bytes):
        raise TypeError("pickle_key must be bytes")
    if len(pickle_key) != PICKLE_KEY_LEN:
        raise ValueError(f"pickle_key must be {PICKLE_KEY_LEN} bytes")


def _curve(key: bytes) -> vz.Curve25519PublicKey:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise DecryptError
    try:
        return vz.Curve25519PublicKey.from_bytes(key)
    except _VZ_ERRORS:
        raise DecryptError from None


# Canonical layout of a vodozemac pre-key message (see kith.crypto.interfaces):
# 0x03 | 0A 20 one_time_key | 12 20 base_key | 1A 20 identity_key | 22 len message
_PREKEY_TAGS: Final = ((1, b"\x0a\x20"), (35, b"\x12\x20"), (69, b"\x1a\x20"))
_PREKEY_KEY_ENDS: Final = (34, 68, 102)  # last byte of each key: its top bit must be clear
_PREKEY_IDENTITY: Final = slice(71, 103)


def _canonical(kind: OlmKind, ciphertext: bytes, message: vz.AnyOlmMessage) -> None:
    """Refuse any encoding but the one vodozemac itself produces.

    vodozemac authenticates the *decoded* message (it re-encodes before checking the MAC) and
    an established session ignores most of a pre-key header, so without this a relay could
    alter bytes undetected: re-ordered or padded protobuf fields, over-long varints, or the
    top bit of a Curve25519 key (X25519 ignores it, so the key "matches" either way). The
    message must re-encode to exactly the bytes received, and every key must be in its
    canonical form (top bit clear), so every byte of a block is covered by a check.
    """
    if message.to_parts() != (int(kind), ciphertext):
        raise DecryptError
    if kind is OlmKind.PREKEY:
        if len(ciphertext) <= _PREKEY_IDENTITY.stop or ciphertext[0] != 3:
            raise DecryptError
        if any(ciphertext[at : at + 2] != tag for at, tag in _PREKEY_TAGS):
            raise DecryptError
        if any(ciphertext[end] & 0x80 for end in _PREKEY_KEY_ENDS):
            raise DecryptError


def _pickle_text(data: bytes) -> str:
    if not isinstance(data, bytes):
        raise DecryptError
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise DecryptError from None


class Session:
    """One Olm session. Failed decryptions leave it unchanged."""

    __slots__ = ("_session",)

    def __init__(self, session: vz.Session) -> None:
        self._session = session

    def encrypt(self, plaintext: bytes) -> tuple[OlmKind, bytes]:
        if not isinstance(plaintext, bytes):
            raise TypeError("plaintext must be bytes")
        kind, ciphertext = self._session.encrypt(plaintext).to_parts()
        return OlmKind(kind), bytes(ciphertext)

    def try_decrypt(self, kind: OlmKind, ciphertext: bytes) -> tuple[Session, bytes]:
        """Decrypt on a copy: returns the advanced copy and the plaintext; ``self`` never moves.

        The copy is not an optimisation to skip: vodozemac can change a session while failing
        (a message with an unknown ratchet key makes it start a receiving chain before the MAC
        check fails), so the only way to keep "a failure changes nothing" is to never let a
        failure touch the live state.
        """
        if not isinstance(ciphertext, bytes):
            raise DecryptError
        work = self.copy()
        try:
            message = vz.AnyOlmMessage.from_parts(int(kind), ciphertext)
            _canonical(kind, ciphertext, message)
            if kind is OlmKind.PREKEY:
                # An established session decrypts only the inner message of a pre-key message
                # and ignores its one-time, base and identity key fields, so a flipped bit
                # there would go unnoticed. Insist that they name this very session.
                prekey = message.to_pre_key()
                if prekey is None or not work._session.session_matches(prekey):
                    raise DecryptError
            plaintext = bytes(work._session.decrypt(message))
        except _VZ_ERRORS:
            raise DecryptError from None
        return work, plaintext

    def decrypt(self, kind: OlmKind, ciphertext: bytes) -> bytes:
        """Decrypt and advance this session; on failure it is left exactly as it was."""
        work, plaintext = self.try_decrypt(kind, ciphertext)
        self._session = work._session
        return plaintext

    def copy(self) -> Session:
        return Session(vz.Session.from_pickle(self._session.pickle(_COPY_KEY), _COPY_KEY))

    def pickle(self, pickle_key: bytes) -> bytes:
        _check_pickle_key(pickle_key)
        return self._session.pickle(pickle_key).encode("ascii")

    @classmethod
    def from_pickle(cls, data: bytes, pickle_key: bytes) -> Session:
        _check_pickle_key(pickle_key)
        try:
            return cls(vz.Session.from_pickle(_pickle_text(data), pickle_key))
        except _VZ_ERRORS:
            raise DecryptError from None

    def __repr__(self) -> str:
        return "Session(<secret>)"


class Account:
    """The secret identity of one relationship: Ed25519 signing key + Curve25519 Olm key."""

    __slots__ = ("_account",)

    def __init__(self, account: vz.Account) -> None:
        self._account = account

    @classmethod
    def generate(cls) -> Account:
        return cls(vz.Account())

    @property
    def identity_keys(self) -> IdentityKeys:
        return IdentityKeys(
            ed25519=_unb64(self._account.ed25519_key.to_base64()),
            curve25519=bytes(self._account.curve25519_key.to_bytes()),
        )

    def sign(self, message: bytes) -> bytes:
        if not isinstance(message, bytes):
            raise TypeError("message must be bytes")
        return _unb64(self._account.sign(message).to_base64())

    def new_one_time_key(self) -> bytes:
        before = set(self._account.one_time_keys)
        self._account.generate_one_time_keys(1)
        fresh = [k for name, k in self._account.one_time_keys.items() if name not in before]
        self._account.mark_keys_as_published()
        if len(fresh) != 1:  # pragma: no cover - vodozemac contract
            raise RuntimeError("vodozemac did not create exactly one one-time key")
        return bytes(fresh[0].to_bytes())

    def create_outbound(self, their_curve25519: bytes, one_time_key: bytes) -> Session:
        identity, otk = _curve(their_curve25519), _curve(one_time_key)
        try:
            return Session(self._account.create_outbound_session(identity, otk))
        except _VZ_ERRORS:
            raise DecryptError from None

    def create_inbound(
        self, their_curve25519: bytes, prekey_message: bytes
    ) -> tuple[Account, Session, bytes]:
        """Answer a pre-key message, on a copy of this account.

        Returns the account *without* the one-time key the message used, the new session and
        the plaintext; ``self`` is unchanged, so the caller commits by adopting the returned
        account only once its own checks pass.
        """
        identity = _curve(their_curve25519)
        if not isinstance(prekey_message, bytes):
            raise DecryptError
        work = self.copy()
        try:
            message = vz.AnyOlmMessage.from_parts(int(OlmKind.PREKEY), prekey_message)
            _canonical(OlmKind.PREKEY, prekey_message, message)
            if prekey_message[_PREKEY_IDENTITY] != their_curve25519:
                raise DecryptError
            prekey = message.to_pre_key()
            if prekey is None:
                raise DecryptError
            session, plaintext = work._account.create_inbound_session(identity, prekey)
        except _VZ_ERRORS:
            raise DecryptError from None
        return work, Session(session), bytes(plaintext)

    def copy(self) -> Account:
        return Account(vz.Account.from_pickle(self._account.pickle(_COPY_KEY), _COPY_KEY))

    def pickle(self, pickle_key: bytes) -> bytes:
        _check_pickle_key(pickle_key)
        return self._account.pickle(pickle_key).encode("ascii")

    @classmethod
    def from_pickle(cls, data: bytes, pickle_key: bytes) -> Account:
        _check_pickle_key(pickle_key)
        try:
            return cls(vz.Account.from_pickle(_pickle_text(data), pickle_key))
        except _VZ_ERRORS:
            raise DecryptError from None

    def __repr__(self) -> str:
        return "Account(<secret>)"


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise DecryptError unless ``signature`` is ``public_key``'s Ed25519 signature."""
    signing.verify(public_key, signature, message)


class VodozemacCrypto:
    """The :class:`~kith.crypto.interfaces.PairwiseCrypto` the protocol layer is handed."""

    __slots__ = ()

    def new_account(self) -> Account:
        return Account.generate()

    def load_account(self, data: bytes, pickle_key: bytes) -> Account:
        return Account.from_pickle(data, pickle_key)

    def load_session(self, data: bytes, pickle_key: bytes) -> Session:
        return Session.from_pickle(data, pickle_key)

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> None:
        verify(public_key, signature, message)

    def signing_public_key(self, seed: bytes) -> bytes:
        return signing.SigningKey(seed).public_key

    def seal(self, key: bytes, label: bytes, plaintext: bytes) -> bytes:
        return statebox.seal(key, label, plaintext)

    def open(self, key: bytes, label: bytes, blob: bytes) -> bytes:
        return statebox.open_sealed(key, label, blob)

    def derive_key(self, key: bytes, label: bytes) -> bytes:
        return statebox.derive_key(key, label)

    def safety_digest(self, first: IdentityKeys, second: IdentityKeys) -> bytes:
        return safety_digest(first, second)


#: The implementation callers pass to the protocol layer.
CRYPTO: Final = VodozemacCrypto()

__all__ = ["CRYPTO", "Account", "Session", "VodozemacCrypto", "verify"]
