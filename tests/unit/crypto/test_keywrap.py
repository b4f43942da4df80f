"""ChaCha20-Poly1305 key wrapping: RFC 8439 known answer, tamper tests, one opaque error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kith.crypto.keywrap import unwrap, wrap
from kith.errors import DecryptError

KEY = bytes(range(0x80, 0xA0))
NONCE = bytes.fromhex("070000004041424344454647")
AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
    "1ae10b594f09e26a7e902ecbd0600691"
)


def test_rfc8439_aead_vector() -> None:
    assert wrap(KEY, NONCE, PLAINTEXT, AAD) == CIPHERTEXT
    assert unwrap(KEY, NONCE, CIPHERTEXT, AAD) == PLAINTEXT


@given(position=st.integers(0, len(CIPHERTEXT) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    tampered = bytearray(CIPHERTEXT)
    tampered[position] ^= 1 << bit
    with pytest.raises(DecryptError):
        unwrap(KEY, NONCE, bytes(tampered), AAD)


def test_wrong_key_nonce_aad_or_length_all_raise_the_same_error() -> None:
    failures = []
    for key, nonce, ct, aad in [
        (bytes(32), NONCE, CIPHERTEXT, AAD),
        (KEY, bytes(12), CIPHERTEXT, AAD),
        (KEY, NONCE, CIPHERTEXT, AAD + b"x"),
        (KEY, NONCE, CIPHERTEXT[:-1], AAD),
        (KEY, NONCE, CIPHERTEXT[:10], AAD),
        (KEY, NONCE, b"", AAD),
    ]:
        with pytest.raises(DecryptError) as info:
            unwrap(key, nonce, ct, aad)
        failures.append(str(info.value))
    assert len(set(failures)) == 1


def test_misuse_raises_type_and_value_errors() -> None:
    with pytest.raises(ValueError):
        wrap(bytes(16), NONCE, b"x", b"")
    with pytest.raises(ValueError):
        wrap(KEY, bytes(8), b"x", b"")
    with pytest.raises(TypeError):
        wrap(KEY, NONCE, "x", b"")  # type: ignore[arg-type]
