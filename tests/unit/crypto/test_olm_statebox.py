"""Sealed state blobs (the form in which Olm sessions and channel state reach the vault)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto import statebox
from kith.errors import DecryptError

KEY = bytes(range(32))


@settings(max_examples=200)
@given(st.binary(max_size=5000), st.binary(max_size=40))
def test_round_trip(plaintext: bytes, label: bytes) -> None:
    blob = statebox.seal(KEY, label, plaintext)
    assert len(blob) == len(plaintext) + statebox.OVERHEAD
    assert statebox.open_sealed(KEY, label, blob) == plaintext


def test_every_seal_differs() -> None:
    """A fresh salt per blob: equal states are not recognisable as equal on disk."""
    assert statebox.seal(KEY, b"l", b"same") != statebox.seal(KEY, b"l", b"same")


def test_tampering_wrong_key_or_label_is_refused() -> None:
    blob = statebox.seal(KEY, b"channel", b"state" * 20)
    for i in range(len(blob)):
        bad = blob[:i] + bytes([blob[i] ^ 0x80]) + blob[i + 1 :]
        with pytest.raises(DecryptError):
            statebox.open_sealed(KEY, b"channel", bad)
    with pytest.raises(DecryptError):
        statebox.open_sealed(bytes(32), b"channel", blob)
    with pytest.raises(DecryptError):
        statebox.open_sealed(KEY, b"invitation", blob)
    for short in (b"", blob[:10], blob[: statebox.OVERHEAD - 1]):
        with pytest.raises(DecryptError):
            statebox.open_sealed(KEY, b"channel", short)


def test_keys_are_checked() -> None:
    with pytest.raises(ValueError):
        statebox.seal(b"short", b"", b"")
    with pytest.raises(TypeError):
        statebox.derive_key("x" * 32, b"")  # type: ignore[arg-type]


def test_derived_keys_separate_purposes() -> None:
    a = statebox.derive_key(KEY, b"olm")
    assert a == statebox.derive_key(KEY, b"olm")
    assert a != statebox.derive_key(KEY, b"olm2")
    assert a != statebox.derive_key(bytes(32), b"olm")
    assert len(a) == 32 and a != KEY
