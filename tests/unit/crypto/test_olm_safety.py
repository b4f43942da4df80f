"""The safety-number digest: symmetric, sensitive to every key bit, and exactly the documented
SHA-512 (checked against hashlib, an independent implementation)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto.interfaces import IdentityKeys
from kith.crypto.safety import safety_digest

keys = st.builds(
    IdentityKeys, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)
)


@settings(max_examples=300)
@given(keys, keys)
def test_digest_is_symmetric_and_documented(a: IdentityKeys, b: IdentityKeys) -> None:
    d = safety_digest(a, b)
    assert d == safety_digest(b, a)
    lo, hi = sorted((a.to_bytes(), b.to_bytes()))
    assert d == hashlib.sha512(b"kith-safety-number-v1\x00" + lo + hi).digest()


@settings(max_examples=100)
@given(keys, keys, st.integers(0, 63), st.integers(0, 7))
def test_any_flipped_bit_changes_the_digest(
    a: IdentityKeys, b: IdentityKeys, pos: int, bit: int
) -> None:
    raw = bytearray(b.to_bytes())
    raw[pos] ^= 1 << bit
    assert safety_digest(a, b) != safety_digest(a, IdentityKeys.from_bytes(bytes(raw)))


def test_known_answer() -> None:
    a = IdentityKeys(bytes(32), bytes([1]) * 32)
    b = IdentityKeys(bytes([2]) * 32, bytes([3]) * 32)
    assert (
        safety_digest(a, b).hex()[:32]
        == hashlib.sha512(b"kith-safety-number-v1\x00" + a.to_bytes() + b.to_bytes()).hexdigest()[
            :32
        ]
    )
