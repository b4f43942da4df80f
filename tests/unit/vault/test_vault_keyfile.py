"""The key-file codec and slot logic, on their own (pure functions, a stand-in KDF)."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kith.crypto.kdf import Argon2idParams
from kith.vault.errors import NotAVault, VaultCorrupt
from kith.vault.keyfile import (
    GRANT_LEN,
    MAX_SLOTS,
    SLOT_LEN,
    Grant,
    KeyFile,
    Role,
    decode_grant,
    decode_keyfile,
    encode_grant,
    encode_keyfile,
    keyfile_size,
    make_header,
    random_slot,
    scan,
    seal_slot,
)
from kith.vault.params import COST_TABLE


def fake_kdf(passphrase: bytes, salt: bytes, params: Argon2idParams) -> bytes:
    """Stand-in for Argon2id in pure codec tests: deterministic, instant, params-sensitive."""
    return hashlib.sha256(repr(params).encode() + salt + passphrase).digest()


keys32 = st.binary(min_size=32, max_size=32)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    role = draw(st.sampled_from(Role))
    profile = draw(st.integers(0, 1))
    keys = [draw(st.one_of(st.none(), keys32)) for _ in range(2)]
    if role is not Role.PANIC and keys[profile] is None:
        keys[profile] = draw(keys32)
    return Grant(role, profile, tuple(keys), draw(st.integers(0, 0xFFFF)))


@given(grants())
def test_grant_round_trip(grant: Grant) -> None:
    data = encode_grant(grant)
    assert len(data) == GRANT_LEN
    assert decode_grant(data) == grant


@given(
    header=st.integers(0, 255),
    slots=st.lists(st.binary(min_size=SLOT_LEN, max_size=SLOT_LEN), min_size=1, max_size=MAX_SLOTS),
)
def test_keyfile_round_trip(header: int, slots: list[bytes]) -> None:
    keyfile = KeyFile(header, tuple(slots))
    data = encode_keyfile(keyfile)
    assert len(data) == keyfile_size(len(slots))
    assert decode_keyfile(data) == keyfile


@given(n=st.integers(1, MAX_SLOTS), data=st.data())
def test_any_bytes_of_a_valid_size_are_a_key_file(n: int, data: st.DataObject) -> None:
    # Magic-free on purpose: random bytes parse exactly like a real key file, so a parser
    # (or a forensic tool) cannot tell them apart by structure.
    raw = data.draw(st.binary(min_size=keyfile_size(n), max_size=keyfile_size(n)))
    keyfile = decode_keyfile(raw)
    assert keyfile.n == n
    assert keyfile.params in COST_TABLE
    assert encode_keyfile(keyfile) == raw


@given(size=st.integers(0, keyfile_size(MAX_SLOTS) + 300))
def test_impossible_sizes_are_not_a_vault(size: int) -> None:
    n, rest = divmod(size - 1, SLOT_LEN)
    if size >= 1 and rest == 0 and 1 <= n <= MAX_SLOTS:
        return
    with pytest.raises(NotAVault):
        decode_keyfile(bytes(size))


def _grant(profile: int = 0) -> Grant:
    return Grant(Role.REAL, profile, (os.urandom(32), os.urandom(32)), managed=1)


def _file(n: int, used: dict[int, tuple[Grant, bytes]], level: int = 0) -> KeyFile:
    slots = []
    for i in range(n):
        if i in used:
            grant, secret = used[i]
            slots.append(
                seal_slot(grant, secret, level=level, index=i, n=n, rng=os.urandom, kdf=fake_kdf)
            )
        else:
            slots.append(random_slot(os.urandom))
    return KeyFile(make_header(level, os.urandom), tuple(slots))


@given(n=st.integers(1, MAX_SLOTS), data=st.data())
def test_seal_then_scan_finds_the_right_slot(n: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, n - 1))
    grant = _grant()
    keyfile = decode_keyfile(encode_keyfile(_file(n, {index: (grant, b"pw")})))
    assert scan(keyfile, b"pw", fake_kdf) == (index, grant)
    assert scan(keyfile, b"other", fake_kdf) is None


def test_header_keeps_the_level_and_randomises_the_rest() -> None:
    headers = {make_header(5, os.urandom) for _ in range(200)}
    assert {h & 0x0F for h in headers} == {5}
    assert len({h >> 4 for h in headers}) > 8  # high nibble is random


def test_slot_is_bound_to_index_size_and_level() -> None:
    grant = _grant()
    keyfile = _file(4, {1: (grant, b"pw")})
    moved = KeyFile(keyfile.header, (keyfile.slots[1], *keyfile.slots[:1], *keyfile.slots[2:]))
    assert scan(moved, b"pw", fake_kdf) is None
    shrunk = KeyFile(keyfile.header, keyfile.slots[:2])
    assert scan(shrunk, b"pw", fake_kdf) is None
    relabelled = KeyFile(keyfile.header ^ 0x01, keyfile.slots)
    assert scan(relabelled, b"pw", fake_kdf) is None
    high_nibble = KeyFile(keyfile.header ^ 0x80, keyfile.slots)
    assert scan(high_nibble, b"pw", fake_kdf) == (1, grant)


@pytest.mark.parametrize("match", [None, 0, 3, 7])
@pytest.mark.parametrize("used", [1, 4, 8])
def test_scan_does_the_same_work_whatever_matches(match: int | None, used: int) -> None:
    calls: list[tuple[bytes, Argon2idParams]] = []

    def counting_kdf(passphrase: bytes, salt: bytes, params: Argon2idParams) -> bytes:
        calls.append((passphrase, params))
        return fake_kdf(passphrase, salt, params)

    slots = {i: (_grant(), f"pw{i}".encode()) for i in range(used)}
    if match is not None:
        slots[match] = (_grant(), b"target")
    keyfile = _file(8, slots)
    result = scan(keyfile, b"target", counting_kdf)
    assert (result[0] if result else None) == match
    # One derivation per slot, same parameters, never an early exit.
    assert len(calls) == 8
    assert {p for _, p in calls} == {keyfile.params}


def test_first_matching_slot_wins() -> None:
    a, b = _grant(0), _grant(1)
    keyfile = _file(4, {1: (a, b"pw"), 3: (b, b"pw")})
    assert scan(keyfile, b"pw", fake_kdf) == (1, a)


def _raw_grant(**fields: int) -> bytes:
    data = bytearray(encode_grant(_grant()))
    for offset, value in fields.items():
        data[int(offset.removeprefix("o"))] = value
    return bytes(data)


@pytest.mark.parametrize(
    "damage",
    [
        {"o0": 2},  # unknown format version
        {"o1": 0},  # unknown role
        {"o1": 9},
        {"o2": 2},  # unknown profile
        {"o3": 0},  # the profile it opens is not granted
        {"o3": 4},  # grants an unknown profile
        {"o10": 1},  # reserved byte
    ],
)
def test_authenticated_but_malformed_grants_are_refused(damage: dict[str, int]) -> None:
    with pytest.raises(VaultCorrupt):
        decode_grant(_raw_grant(**damage))


def test_ungranted_key_must_be_zero() -> None:
    grant = Grant(Role.REAL, 0, (os.urandom(32), None), managed=1)
    data = bytearray(encode_grant(grant))
    assert data[52:84] == bytes(32)
    data[60] = 1
    with pytest.raises(VaultCorrupt):
        decode_grant(bytes(data))


def test_grant_never_shows_its_keys() -> None:
    grant = _grant()
    assert grant.data_key.hex() not in repr(grant)
    assert "secret" in repr(grant)


def test_invalid_grants_and_keyfiles_cannot_be_built() -> None:
    with pytest.raises(ValueError):
        Grant(Role.REAL, 0, (None, os.urandom(32)), managed=1)
    with pytest.raises(ValueError):
        Grant(Role.REAL, 2, (os.urandom(32), None), managed=1)
    with pytest.raises(ValueError):
        Grant(Role.REAL, 0, (b"short", None), managed=1)
    with pytest.raises(ValueError):
        KeyFile(0, ())
    with pytest.raises(ValueError):
        KeyFile(0, (bytes(127),))
    with pytest.raises(ValueError):
        seal_slot(_grant(), b"pw", level=0, index=8, n=8, rng=os.urandom, kdf=fake_kdf)
