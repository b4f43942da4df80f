"""The vault's everyday behaviour: create, unlock, store, change passphrase, close."""

from __future__ import annotations

import os
import pathlib
import stat
import unicodedata

import pytest

from kith.crypto.kdf import Argon2idParams
from kith.vault import (
    InvalidPassphrase,
    InvalidRecord,
    NotAVault,
    PassphraseInUse,
    Role,
    UnsupportedParams,
    Vault,
    VaultClosed,
    VaultExists,
    WrongPassphrase,
)
from kith.vault.keyfile import keyfile_size
from kith.vault.params import COST_TABLE
from kith.vault.vault import DB_NAMES, KEYFILE_NAME

from .conftest import PASSPHRASE, MakeVault
from .helpers import grant_of, relayout, snapshot


def test_create_lays_out_a_private_directory(make_vault: MakeVault) -> None:
    vault = make_vault()
    vault.close()
    path = vault.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.iterdir()) == sorted([KEYFILE_NAME, *DB_NAMES])
    for child in path.iterdir():
        assert stat.S_IMODE(child.stat().st_mode) == 0o600
    assert (path / KEYFILE_NAME).stat().st_size == keyfile_size(8)
    # Both profile databases exist and start out the same size.
    sizes = {(path / name).stat().st_size for name in DB_NAMES}
    assert len(sizes) == 1
    # Nothing but the vault itself was left in the parent directory.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_round_trip_of_records_and_pickles(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        vault.db.put("contact/1", b"alias one")
        vault.db.put("contact/2", b"\x00\xff" * 100)
        vault.db.put("other", b"")
        vault.db.put("contact/1", b"alias one, renamed")
        vault.db.put_pickle("session", "abc", b"PICKLE")
        path, pickle_key = vault.path, vault.pickle_key
    with Vault.unlock(path, PASSPHRASE) as vault:
        assert vault.db.get("contact/1") == b"alias one, renamed"
        assert vault.db.get("missing") is None
        assert vault.db.keys("contact/") == ["contact/1", "contact/2"]
        assert dict(vault.db.items("contact/2")) == {"contact/2": b"\x00\xff" * 100}
        assert vault.db.keys() == ["contact/1", "contact/2", "other"]
        assert vault.db.get_pickle("session", "abc") == b"PICKLE"
        assert vault.db.pickle_names("session") == ["abc"]
        assert vault.db.delete_pickle("session", "abc") is True
        assert vault.db.delete_pickle("session", "abc") is False
        assert vault.db.delete("other") is True
        assert vault.db.delete("other") is False
        assert vault.pickle_key == pickle_key  # derived, stable across unlocks
        assert len(pickle_key) == 32
        assert vault.role is Role.REAL


def test_transaction_is_all_or_nothing(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        with pytest.raises(RuntimeError), vault.db.transaction():
            vault.db.put("a", b"1")
            vault.db.put_pickle("account", "me", b"p")
            raise RuntimeError
        assert vault.db.get("a") is None
        assert vault.db.get_pickle("account", "me") is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("", b"x"), ("k" * 513, b"x"), ("a\x00b", b"x"), ("k", "text"), (b"k", b"x"), ("k", None)],
)
def test_bad_records_are_refused_and_change_nothing(
    make_vault: MakeVault, key: object, value: object
) -> None:
    with make_vault() as vault:
        with pytest.raises(InvalidRecord):
            vault.db.put(key, value)  # type: ignore[arg-type]
        assert vault.db.keys() == []
        with pytest.raises(InvalidRecord):
            vault.db.put_pickle("session", key, value)  # type: ignore[arg-type]
        assert vault.db.pickle_names("session") == []


def test_create_refuses_existing_paths(tmp_path: pathlib.Path, make_vault: MakeVault) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(VaultExists):
        make_vault(name="taken")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(VaultExists):
        make_vault(name="file")
    assert list((tmp_path / "taken").iterdir()) == []


def test_create_refuses_test_params_unless_told(
    tmp_path: pathlib.Path, insecure_fast_params_for_tests_only: Argon2idParams
) -> None:
    with pytest.raises(UnsupportedParams):
        Vault.create(tmp_path / "v", PASSPHRASE, insecure_fast_params_for_tests_only)
    with pytest.raises(UnsupportedParams):
        Vault.create(tmp_path / "v", PASSPHRASE, Argon2idParams(10 * 1024, 1))
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("bad", ["", "x" * 1025, "é" * 513])
def test_create_refuses_unusable_passphrases(make_vault: MakeVault, bad: str) -> None:
    with pytest.raises(InvalidPassphrase):
        make_vault(passphrase=bad)


def test_slot_count_is_configurable(make_vault: MakeVault) -> None:
    with make_vault(slots=3) as vault:
        assert (vault.path / KEYFILE_NAME).stat().st_size == keyfile_size(3)
    with Vault.unlock(vault.path, PASSPHRASE):
        pass
    with pytest.raises(ValueError):
        make_vault(slots=17)


def test_own_slot_and_profile_file_are_random(make_vault: MakeVault) -> None:
    # A predictable real slot would let an attacker test each guess against one slot only;
    # a predictable real database file would tell a captor which profile is the decoy.
    seen_slots, seen_profiles = set(), set()
    for _ in range(24):
        with make_vault() as vault:
            index, grant = grant_of(vault.path, PASSPHRASE)
        seen_slots.add(index)
        seen_profiles.add(grant.profile)
    assert len(seen_slots) >= 4
    assert seen_profiles == {0, 1}


def test_unicode_passphrases_are_normalised(make_vault: MakeVault) -> None:
    composed = unicodedata.normalize("NFC", "Ünïcødé pässphrasé")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    with make_vault(passphrase=composed) as vault:
        pass
    with Vault.unlock(vault.path, decomposed):
        pass


def test_unlock_of_something_that_is_not_a_vault(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotAVault):
        Vault.unlock(tmp_path / "nothing", PASSPHRASE)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / KEYFILE_NAME).write_bytes(os.urandom(1000))
    with pytest.raises(NotAVault):
        Vault.unlock(tmp_path / "odd", PASSPHRASE)
    with pytest.raises(TypeError):
        Vault.unlock(tmp_path / "odd", b"bytes")  # type: ignore[arg-type]


def test_change_passphrase(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        vault.db.put("k", b"v")
        before_index, _ = grant_of(vault.path, PASSPHRASE)
        vault.change_passphrase(PASSPHRASE, "a new passphrase")
        assert vault.db.get("k") == b"v"  # the session carries on
        path = vault.path
    with pytest.raises(WrongPassphrase):
        Vault.unlock(path, PASSPHRASE)
    with Vault.unlock(path, "a new passphrase") as vault:
        assert vault.db.get("k") == b"v"
        vault.change_passphrase("a new passphrase", "a new passphrase")  # fresh salt, same text
    after_index, _ = grant_of(path, "a new passphrase")
    assert after_index == before_index


def test_change_passphrase_redraws_every_slot_it_controls(make_vault: MakeVault) -> None:
    # Two disk images taken before and after a change must not single out the used slot.
    with make_vault() as vault:
        old = (vault.path / KEYFILE_NAME).read_bytes()
        vault.change_passphrase(PASSPHRASE, "next")
        new = (vault.path / KEYFILE_NAME).read_bytes()
    chunks = [
        (old[1 + 128 * i : 129 + 128 * i], new[1 + 128 * i : 129 + 128 * i]) for i in range(8)
    ]
    assert all(a != b for a, b in chunks)


def test_change_passphrase_keeps_slots_managed_for_others(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    relayout(path, PASSPHRASE, 2, {5: "second passphrase"})
    with Vault.unlock(path, PASSPHRASE) as vault:
        vault.change_passphrase(PASSPHRASE, "renewed")
    with Vault.unlock(path, "second passphrase"):
        pass
    with Vault.unlock(path, "renewed"):
        pass


def test_change_passphrase_refuses_wrong_old_and_bad_new(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
        before = snapshot(path)
        with pytest.raises(WrongPassphrase):
            vault.change_passphrase("not it", "new")
        with pytest.raises(InvalidPassphrase):
            vault.change_passphrase(PASSPHRASE, "")
        assert snapshot(path) == before


def test_change_passphrase_refuses_one_that_opens_another_slot(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    relayout(path, PASSPHRASE, 0, {3: "taken"})
    with Vault.unlock(path, PASSPHRASE) as vault:
        before = snapshot(path)
        with pytest.raises(PassphraseInUse):
            vault.change_passphrase(PASSPHRASE, "taken")
        # The other slot's holder cannot be used as "old" for this session either.
        with pytest.raises(WrongPassphrase):
            vault.change_passphrase("taken", "mine now")
        assert snapshot(path) == before


def test_closed_vault_refuses_everything(make_vault: MakeVault) -> None:
    vault = make_vault()
    db = vault.db
    vault.close()
    vault.close()  # idempotent
    with pytest.raises(VaultClosed):
        _ = vault.db
    with pytest.raises(VaultClosed):
        _ = vault.pickle_key
    with pytest.raises(VaultClosed):
        vault.change_passphrase(PASSPHRASE, "x")
    with pytest.raises(Exception, match="closed"):
        db.get("k")
    assert "closed" in repr(vault)


def test_close_overwrites_the_pickle_key_it_holds(make_vault: MakeVault) -> None:
    vault = make_vault()
    held = vault._pickle_key  # the mutable buffer the object owns
    assert any(held)
    vault.close()
    assert held == bytearray(32)


def test_cost_level_is_read_from_the_key_file(tmp_path: pathlib.Path) -> None:
    # A vault made at level 1 opens without being told its parameters.
    vault = Vault.create(
        tmp_path / "v", PASSPHRASE, COST_TABLE[1], allow_insecure_params_for_tests=True
    )
    vault.close()
    assert (tmp_path / "v" / KEYFILE_NAME).read_bytes()[0] & 0x0F == 1
    with Vault.unlock(tmp_path / "v", PASSPHRASE):
        pass


def test_vault_class_has_no_instances() -> None:
    with pytest.raises(TypeError):
        Vault()
