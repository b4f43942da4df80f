"""The vault against someone who holds the device: forensic reads, guesses, tampering, timing.

Each test plays one move of the adversary in THREATS.md ("seize devices and image them
forensically, more than once"; "try many passphrases ... while watching the screen").
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import statistics
import time
from collections.abc import Callable

import pytest

from kith.crypto.kdf import argon2id, hkdf_sha256
from kith.vault import KeyFileModified, NotAVault, Vault, VaultCorrupt, WrongPassphrase, fsio
from kith.vault.keyfile import SLOT_LEN, decode_keyfile
from kith.vault.keyfile import _try_slot as try_one_slot
from kith.vault.vault import _DB_KEY_INFO, DB_NAMES, KEYFILE_NAME

from .conftest import PASSPHRASE, MakeVault
from .helpers import all_bytes, grant_of, relayout, snapshot

MARKER = b"KITH-PLAINTEXT-MARKER-2c9e1f"
CAPTOR = "the captor's own passphrase"


def _full_snapshot(directory: pathlib.Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(directory.iterdir())
    }


# --------------------------------------------------------------------------- forensic image


def test_no_plaintext_reaches_any_file(make_vault: MakeVault) -> None:
    vault = make_vault()
    path = vault.path
    for i in range(300):
        vault.db.put(f"msg/{i:04d}/{MARKER.decode()}", MARKER * 30 + i.to_bytes(2, "big"))
    vault.db.put_pickle("session", MARKER.decode(), MARKER * 40)
    for i in range(0, 300, 3):
        vault.db.delete(f"msg/{i:04d}/{MARKER.decode()}")
    # While a write transaction is open the rollback journal exists: search it too.
    with vault.db.transaction():
        vault.db.put("in-flight", MARKER * 500)
        names = [p.name for p in path.iterdir()]
        assert any(n.endswith("-journal") for n in names), names
        assert MARKER not in all_bytes(path)
    assert MARKER not in all_bytes(path)  # open, after commits
    _, grant = grant_of(path, PASSPHRASE)
    secrets = [
        vault.pickle_key,
        *(k for k in grant.keys if k is not None),
        *(hkdf_sha256(k, _DB_KEY_INFO) for k in grant.keys if k is not None),
        PASSPHRASE.encode(),
    ]
    vault.close()
    image = all_bytes(path)
    assert MARKER not in image
    for secret in secrets:
        assert secret not in image
        assert secret.hex().encode() not in image
    # Nothing else was left next to the vault, and nothing beside the three files inside.
    assert sorted(p.name for p in path.iterdir()) == sorted([KEYFILE_NAME, *DB_NAMES])


# --------------------------------------------------------------------------- guessing


@pytest.mark.parametrize(
    "guess",
    ["wrong", "", "correct horse battery stapl", "Correct horse battery staple", "x" * 5000],
)
def test_wrong_passphrase_says_only_that_and_changes_nothing(
    make_vault: MakeVault, guess: str
) -> None:
    with make_vault() as vault:
        vault.db.put("k", b"v")
    before = _full_snapshot(vault.path)
    with pytest.raises(WrongPassphrase) as info:
        Vault.unlock(vault.path, guess)
    assert str(info.value) == "wrong passphrase"
    assert type(info.value) is WrongPassphrase
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None
    assert _full_snapshot(vault.path) == before


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("offset", [0, 15, 16, 27, 28, 60, 111, 112, 127])
def test_flipped_byte_in_the_matching_slot_never_opens(make_vault: MakeVault, offset: int) -> None:
    with make_vault() as vault:
        path = vault.path
    index, _ = grant_of(path, PASSPHRASE)
    keyfile = bytearray((path / KEYFILE_NAME).read_bytes())
    keyfile[1 + index * SLOT_LEN + offset] ^= 0x01
    (path / KEYFILE_NAME).write_bytes(bytes(keyfile))
    before = _full_snapshot(path)
    # Indistinguishable from a wrong passphrase (by design: the slot is just random bytes now).
    with pytest.raises(WrongPassphrase):
        Vault.unlock(path, PASSPHRASE)
    with pytest.raises(WrongPassphrase):
        Vault.unlock(path, PASSPHRASE, accept_modified_keyfile=True)
    assert _full_snapshot(path) == before


def test_flipped_byte_anywhere_else_is_detected(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    index, _ = grant_of(path, PASSPHRASE)
    original = (path / KEYFILE_NAME).read_bytes()
    other = (index + 3) % 8
    positions = [0, *(1 + other * SLOT_LEN + o for o in (0, 20, 64, 127))]
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x80  # for the header: the random high nibble, not the level
        (path / KEYFILE_NAME).write_bytes(bytes(damaged))
        before = _full_snapshot(path)
        with pytest.raises(KeyFileModified):
            Vault.unlock(path, PASSPHRASE)
        assert _full_snapshot(path) == before
    (path / KEYFILE_NAME).write_bytes(original)
    with Vault.unlock(path, PASSPHRASE):
        pass


def test_a_modified_key_file_can_be_accepted_explicitly(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        vault.db.put("k", b"v")
        path = vault.path
    index, _ = grant_of(path, PASSPHRASE)
    damaged = bytearray((path / KEYFILE_NAME).read_bytes())
    damaged[1 + ((index + 1) % 8) * SLOT_LEN] ^= 0xFF
    (path / KEYFILE_NAME).write_bytes(bytes(damaged))
    with Vault.unlock(path, PASSPHRASE, accept_modified_keyfile=True) as vault:
        assert vault.db.get("k") == b"v"
    with Vault.unlock(path, PASSPHRASE) as vault:  # repaired: no longer reported
        assert vault.db.get("k") == b"v"


def test_flipping_the_cost_level_is_a_wrong_passphrase(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    damaged = bytearray((path / KEYFILE_NAME).read_bytes())
    damaged[0] ^= 0x01  # level 0 -> 1: other Argon2id parameters, other keys
    (path / KEYFILE_NAME).write_bytes(bytes(damaged))
    with pytest.raises(WrongPassphrase):
        Vault.unlock(path, PASSPHRASE)


def test_truncated_or_padded_key_file_is_not_a_vault(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    original = (path / KEYFILE_NAME).read_bytes()
    for damaged in (original[:-1], original + b"\x00", b""):
        (path / KEYFILE_NAME).write_bytes(damaged)
        with pytest.raises(NotAVault):
            Vault.unlock(path, PASSPHRASE)


def test_damaged_or_swapped_databases_are_reported(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    a, b = path / DB_NAMES[0], path / DB_NAMES[1]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(VaultCorrupt):
        Vault.unlock(path, PASSPHRASE)
    a.write_bytes(da)
    b.write_bytes(db)
    _, grant = grant_of(path, PASSPHRASE)
    target = path / DB_NAMES[grant.profile]
    page1 = bytearray(target.read_bytes())
    page1[100] ^= 0x01
    target.write_bytes(bytes(page1))
    with pytest.raises(VaultCorrupt):
        Vault.unlock(path, PASSPHRASE)


def test_a_forged_key_file_does_not_open_the_real_data(
    make_vault: MakeVault, tmp_path: pathlib.Path
) -> None:
    # The captor plants a key file of their own (from another vault) into the victim's vault.
    with make_vault() as victim:
        victim.db.put("k", MARKER)
    with make_vault(passphrase=CAPTOR) as other:
        pass
    (victim.path / KEYFILE_NAME).write_bytes((other.path / KEYFILE_NAME).read_bytes())
    with pytest.raises(VaultCorrupt):
        Vault.unlock(victim.path, CAPTOR)
    with pytest.raises(WrongPassphrase):
        Vault.unlock(victim.path, PASSPHRASE)


# --------------------------------------------------------------------------- time and size
#
# The statistic: rounds of one unlock per condition, in a fresh random order each round; each
# time is divided by the mean of its round (so load on the machine cancels out), and the median
# of these ratios per condition must lie within TOLERANCE of 1. With identical work per slot,
# the true ratios are 1; an early-exit scan gives ratios near 2/(1+8) and 16/(1+8) for a match
# in the first and last of 8 slots, far outside the band (the power check below shows it).

TOLERANCE = 0.10
ROUNDS = 7


def _median_ratios(conditions: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    order = list(conditions)
    for name in order:  # warm-up: caches, allocator, page cache
        conditions[name]()
    ratios: dict[str, list[float]] = {name: [] for name in order}
    shuffle = random.Random(1234)
    for _ in range(rounds):
        shuffle.shuffle(order)
        times = {}
        for name in order:
            start = time.perf_counter()
            conditions[name]()
            times[name] = time.perf_counter() - start
        mean = sum(times.values()) / len(times)
        for name, value in times.items():
            ratios[name].append(value / mean)
    return {name: statistics.median(values) for name, values in ratios.items()}


def _within(medians: dict[str, float]) -> bool:
    return all(abs(m - 1) <= TOLERANCE for m in medians.values())


def _vault_with(make_vault: MakeVault, match: int, used: int) -> pathlib.Path:
    with make_vault() as vault:
        path = vault.path
    others = [i for i in range(8) if i != match][: used - 1]
    relayout(path, PASSPHRASE, match, {i: f"other {i}" for i in others})
    return path


def test_unlock_time_does_not_reveal_which_slot_matched_or_how_many_are_used(
    make_vault: MakeVault,
) -> None:
    vaults = {
        "1 used, match in slot 0": _vault_with(make_vault, 0, 1),
        "1 used, match in slot 7": _vault_with(make_vault, 7, 1),
        "8 used, match in slot 0": _vault_with(make_vault, 0, 8),
        "8 used, match in slot 7": _vault_with(make_vault, 7, 8),
    }

    def opener(path: pathlib.Path) -> Callable[[], object]:
        return lambda: Vault.unlock(path, PASSPHRASE).close()

    def failer(path: pathlib.Path) -> Callable[[], object]:
        def attempt() -> None:
            with pytest.raises(WrongPassphrase):
                Vault.unlock(path, "not the passphrase")

        return attempt

    success = _median_ratios({k: opener(p) for k, p in vaults.items()}, ROUNDS)
    assert _within(success), success
    failure = _median_ratios({k: failer(p) for k, p in vaults.items()}, ROUNDS)
    assert _within(failure), failure


def test_the_timing_statistic_would_catch_an_early_exit(make_vault: MakeVault) -> None:
    # Power check: the same statistic applied to a scan that stops at the first match.
    first = decode_keyfile((_vault_with(make_vault, 0, 1) / KEYFILE_NAME).read_bytes())
    last = decode_keyfile((_vault_with(make_vault, 7, 1) / KEYFILE_NAME).read_bytes())

    def early_exit(keyfile: object) -> Callable[[], object]:
        def run() -> None:
            for i in range(8):
                if try_one_slot(keyfile, i, PASSPHRASE.encode(), argon2id) is not None:  # type: ignore[arg-type]
                    return

        return run

    medians = _median_ratios({"first": early_exit(first), "last": early_exit(last)}, 5)
    assert not _within(medians), medians
    assert medians["first"] < 0.5
    assert medians["last"] > 1.5


def test_unlock_reads_the_whole_key_file_once(
    make_vault: MakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _vault_with(make_vault, 5, 3)
    reads: list[int] = []
    real = fsio.read_whole

    def spy(p: pathlib.Path, limit: int) -> bytes:
        data = real(p, limit)
        reads.append(len(data))
        return data

    monkeypatch.setattr(fsio, "read_whole", spy)
    for passphrase in (PASSPHRASE, "other 0", "wrong"):
        reads.clear()
        with contextlib.suppress(WrongPassphrase):
            Vault.unlock(path, passphrase).close()
        assert reads == [(path / KEYFILE_NAME).stat().st_size]


def test_file_sizes_do_not_depend_on_slot_use(make_vault: MakeVault) -> None:
    paths = [
        _vault_with(make_vault, 0, 1),
        _vault_with(make_vault, 6, 8),
        _vault_with(make_vault, 3, 4),
    ]
    for path in paths:
        with Vault.unlock(path, PASSPHRASE) as vault:
            for i in range(50):
                vault.db.put(f"k{i}", bytes(700))
    # Which file holds the real profile is random per vault, so compare the key file and the
    # sizes of the databases as a set of sizes.
    layouts = [
        (
            (path / KEYFILE_NAME).stat().st_size,
            sorted((path / name).stat().st_size for name in DB_NAMES),
            len(list(path.iterdir())),
        )
        for path in paths
    ]
    assert layouts[0] == layouts[1] == layouts[2]


# --------------------------------------------------------------------------- stale files


def test_leftover_temp_key_files_are_scrubbed_at_unlock(make_vault: MakeVault) -> None:
    with make_vault() as vault:
        path = vault.path
    stale = path / f".{KEYFILE_NAME}{fsio.TEMP_MARKER}0011223344556677"
    stale.write_bytes((path / KEYFILE_NAME).read_bytes())
    with Vault.unlock(path, PASSPHRASE):
        pass
    assert not stale.exists()
    assert sorted(p.name for p in path.iterdir()) == sorted([KEYFILE_NAME, *DB_NAMES])


def test_overwrite_before_unlink(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / f".keys{fsio.TEMP_MARKER}ab"
    stale.write_bytes(MARKER * 10)
    seen: list[bytes] = []
    real_unlink = os.unlink

    def spy(p: object) -> None:
        seen.append(pathlib.Path(str(p)).read_bytes())
        real_unlink(p)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", spy)
    assert fsio.scrub_stale_temps(tmp_path, os.urandom) == 1
    assert seen and MARKER not in seen[0] and len(seen[0]) == len(MARKER) * 10


def test_snapshot_helper_sees_hidden_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / ".hidden").write_bytes(MARKER)
    assert MARKER in all_bytes(tmp_path)
    assert ".hidden" in snapshot(tmp_path)
