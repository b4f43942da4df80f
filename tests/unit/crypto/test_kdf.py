"""Known answers and misuse checks for kith.crypto.kdf (Argon2id, HKDF-SHA256, SHA-256)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from argon2.low_level import Type, hash_secret_raw
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto.kdf import Argon2idParams, argon2id, hkdf_sha256, sha256

FAST = Argon2idParams(memory_kib=1024, time_cost=1)


def test_library_matches_the_argon2_reference_vector() -> None:
    # phc-winner-argon2 src/test.c: Argon2id v=0x13, m=2^16, t=2, p=1, "password"/"somesalt".
    expected = "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"
    assert hash_secret_raw(b"password", b"somesalt", 2, 65536, 1, 32, Type.ID, 19).hex() == expected


def test_recipe_is_argon2id_v13_with_the_given_params() -> None:
    salt = bytes(range(16))
    params = Argon2idParams(memory_kib=2048, time_cost=2, parallelism=1)
    reference = hash_secret_raw(b"pw", salt, 2, 2048, 1, 32, Type.ID, 19)
    assert argon2id(b"pw", salt, params) == reference
    # Not Argon2i or Argon2d: a silent change of variant would weaken every vault.
    assert reference != hash_secret_raw(b"pw", salt, 2, 2048, 1, 32, Type.I, 19)


def test_pinned_output_never_changes() -> None:
    # Regression pin: existing vaults depend on this exact mapping.
    out = argon2id(b"password", b"somesaltsomesalt", Argon2idParams(8 * 1024, 1, 1))
    assert out.hex() == "84fb006bbc3cd69895722b64b5bf735251a9e8e9f3ecb93ff595b98aeb7accb7"


def test_every_input_changes_the_output() -> None:
    base = argon2id(b"pw", bytes(16), FAST)
    assert argon2id(b"pw!", bytes(16), FAST) != base
    assert argon2id(b"pw", b"\x01" + bytes(15), FAST) != base
    assert argon2id(b"pw", bytes(16), Argon2idParams(1024, 2)) != base
    assert argon2id(b"pw", bytes(16), Argon2idParams(2048, 1)) != base
    assert len(base) == 32


def test_argon2id_rejects_misuse() -> None:
    with pytest.raises(ValueError):
        argon2id(b"pw", bytes(15), FAST)
    with pytest.raises(TypeError):
        argon2id("pw", bytes(16), FAST)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        argon2id(b"pw", bytes(16), (1024, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        argon2id(b"x" * 5000, bytes(16), FAST)


@pytest.mark.parametrize(
    ("m", "t", "p"),
    [(512, 1, 1), (1024, 0, 1), (1024, 1, 0), (8 * 1024 * 1024, 1, 1), (1024, 65, 1)],
)
def test_params_out_of_range_are_refused(m: int, t: int, p: int) -> None:
    with pytest.raises(ValueError):
        Argon2idParams(m, t, p)


def test_params_reject_bools_and_floats() -> None:
    with pytest.raises(TypeError):
        Argon2idParams(1024.0, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Argon2idParams(1024, True)


def _rfc5869_hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_hkdf_rfc5869_test_case_3_through_the_library() -> None:
    # RFC 5869 A.3 (SHA-256, no salt, no info) checks the independent implementation below.
    ikm = b"\x0b" * 22
    expected = (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )
    assert _rfc5869_hkdf(ikm, b"", 42).hex() == expected


@settings(max_examples=50)
@given(key=st.binary(min_size=32, max_size=32), info=st.binary(max_size=64), n=st.integers(1, 96))
def test_hkdf_matches_rfc5869(key: bytes, info: bytes, n: int) -> None:
    assert hkdf_sha256(key, info, n) == _rfc5869_hkdf(key, info, n)


def test_hkdf_labels_separate_outputs() -> None:
    key = bytes(range(32))
    assert hkdf_sha256(key, b"a") != hkdf_sha256(key, b"b")
    assert hkdf_sha256(bytearray(key), b"a") == hkdf_sha256(key, b"a")


def test_hkdf_rejects_misuse() -> None:
    with pytest.raises(ValueError):
        hkdf_sha256(bytes(31), b"x")
    with pytest.raises(ValueError):
        hkdf_sha256(bytes(32), b"x", 0)
    with pytest.raises(TypeError):
        hkdf_sha256(bytes(32), "x")  # type: ignore[arg-type]


def test_sha256_known_answer() -> None:
    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(TypeError):
        sha256("abc")  # type: ignore[arg-type]
