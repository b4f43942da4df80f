"""The hash behind safety numbers.

Two people compare a number derived from both of their per-relationship identity keys. The
digest is SHA-512 over a versioned label and the two 64-byte key encodings in byte order, so
both sides compute the same value without agreeing on who is "first".

Why a single hash and not Signal's 5200 iterations: an attacker in the middle must make the
numbers on both sides equal, i.e. find keys M1, M2 with digest(A, M1) and digest(M2, B)
agreeing on the 60 displayed digits (about 199 bits). That is a collision search costing about
2^99 hash evaluations; iterating would add ~12 bits to an already infeasible attack while
making every phone do 5200 hashes per contact view. The displayed digits are in
:mod:`kith.protocol.safety`.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import hashes

from kith.crypto.interfaces import IdentityKeys

DIGEST_LEN: Final = 64
_LABEL: Final = b"kith-safety-number-v1\x00"


def safety_digest(first: IdentityKeys, second: IdentityKeys) -> bytes:
    """SHA-512 of the label and both parties' keys in canonical (byte) order."""
    a, b = sorted((first.to_bytes(), second.to_bytes()))
    h = hashes.Hash(hashes.SHA512())
    h.update(_LABEL + a + b)
    return h.finalize()
