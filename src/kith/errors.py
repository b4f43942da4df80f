"""The kith error hierarchy.

Every error kith raises on purpose derives from :class:`KithError`, so an interface can catch
one type and show one clear line instead of a traceback.

The split follows h11: a :class:`LocalProtocolError` means *we* were asked to do something the
protocol forbids (a bug or misuse on this side); a :class:`RemoteProtocolError` means the peer
sent something invalid. Code that parses untrusted bytes raises only the latter.

:class:`DecryptError` is deliberately opaque: every authentication or decryption failure
(wrong key, flipped bit, truncated ciphertext, replay, bad signature) raises the same type with
the same message, so that no caller can become an oracle that tells an attacker *why* a forged
input failed.
"""

from __future__ import annotations


class KithError(Exception):
    """Root of every error kith raises on purpose."""


class LocalProtocolError(KithError):
    """This side tried to do something the protocol does not allow."""


class RemoteProtocolError(KithError):
    """The peer sent bytes that violate the protocol (malformed, oversized, wrong version...)."""


class DecryptError(KithError):
    """Authentication or decryption failed. Carries no detail, on purpose."""

    def __init__(self) -> None:
        super().__init__("message could not be authenticated")


class ConfigError(KithError):
    """A configuration file or flag is invalid."""


class StoreError(KithError):
    """Base of storage errors (relay stores, vault)."""


class StoreUnavailable(StoreError):
    """The storage backend cannot be reached; nothing was written or acknowledged."""
