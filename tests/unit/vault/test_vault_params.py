"""The Argon2id cost table and its calibration (driven by a fake clock, no CPU burnt)."""

from __future__ import annotations

import pytest

from kith.crypto.kdf import Argon2idParams
from kith.vault.errors import UnsupportedParams
from kith.vault.params import (
    CALIBRATION_FLOOR,
    COST_TABLE,
    INSECURE_FAST_PARAMS_FOR_TESTS_ONLY,
    INSECURE_LEVELS,
    calibrate,
    level_of,
    params_for_level,
)


def test_table_has_a_defined_entry_for_every_nibble_in_cost_order() -> None:
    assert len(COST_TABLE) == 16
    works = [p.work for p in COST_TABLE]
    assert works == sorted(works)
    assert len(set(COST_TABLE)) == 16


def test_table_is_pinned() -> None:
    # Existing vaults name their parameters by index: an edit here locks people out.
    assert [(p.memory_kib // 1024, p.time_cost, p.parallelism) for p in COST_TABLE] == [
        (8, 1, 1), (16, 1, 1), (19, 2, 1), (32, 2, 1), (46, 2, 1), (64, 2, 1), (64, 3, 1),
        (96, 3, 1), (128, 3, 1), (192, 3, 1), (256, 3, 1), (384, 3, 1), (512, 3, 1),
        (768, 3, 1), (1024, 3, 1), (1024, 4, 1),
    ]  # fmt: skip


def test_the_test_params_are_marked_insecure() -> None:
    assert Argon2idParams(8 * 1024, 1, 1) == INSECURE_FAST_PARAMS_FOR_TESTS_ONLY
    assert level_of(INSECURE_FAST_PARAMS_FOR_TESTS_ONLY) in INSECURE_LEVELS
    assert CALIBRATION_FLOOR not in INSECURE_LEVELS
    assert all(level < CALIBRATION_FLOOR for level in INSECURE_LEVELS)


def test_level_lookup() -> None:
    for level, params in enumerate(COST_TABLE):
        assert level_of(params) == level
        assert params_for_level(level) == params
    with pytest.raises(UnsupportedParams):
        level_of(Argon2idParams(20 * 1024, 2))
    with pytest.raises(UnsupportedParams):
        params_for_level(16)


class FakeDevice:
    """A device where one derivation takes ``seconds_per_mib_pass`` x memory(MiB) x passes."""

    def __init__(self, seconds_per_mib_pass: float) -> None:
        self.rate = seconds_per_mib_pass
        self.now = 0.0
        self.calls: list[Argon2idParams] = []

    def clock(self) -> float:
        return self.now

    def kdf(self, passphrase: bytes, salt: bytes, params: Argon2idParams) -> bytes:
        self.calls.append(params)
        self.now += self.rate * params.work / 1024
        return bytes(32)


@pytest.mark.parametrize(
    ("rate", "expected_level"),
    [
        # seconds per MiB-pass; budget per slot is 0.75 s / 8 = 93.75 ms
        (0.001, 4),  # 46 MiB x 2 = 92 ms fits; 64 MiB x 2 = 128 ms does not
        (0.0005, 5),  # 64 MiB x 2 = 64 ms fits; 64 MiB x 3 = 96 ms does not
        (0.0001, 10),  # 256 MiB x 3 = 77 ms fits; 384 MiB x 3 = 115 ms does not
        (0.05, CALIBRATION_FLOOR),  # a slow device gets the floor, never less
    ],
)
def test_calibrate_picks_the_costliest_entry_within_target(
    rate: float, expected_level: int
) -> None:
    device = FakeDevice(rate)
    assert calibrate(0.75, clock=device.clock, kdf=device.kdf) == COST_TABLE[expected_level]
    assert all(level_of(p) not in INSECURE_LEVELS for p in device.calls)


def test_calibrate_respects_the_memory_cap() -> None:
    uncapped = calibrate(0.75, clock=(d := FakeDevice(0.00001)).clock, kdf=d.kdf)
    capped = calibrate(
        0.75, max_memory_kib=64 * 1024, clock=(d := FakeDevice(0.00001)).clock, kdf=d.kdf
    )
    assert uncapped.memory_kib > 64 * 1024
    assert capped == COST_TABLE[6]  # the costliest entry with at most 64 MiB


def test_fewer_slots_buy_a_costlier_entry() -> None:
    eight = calibrate(0.75, slots=8, clock=(d := FakeDevice(0.001)).clock, kdf=d.kdf)
    two = calibrate(0.75, slots=2, clock=(d := FakeDevice(0.001)).clock, kdf=d.kdf)
    assert level_of(two) > level_of(eight)


def test_calibrate_steps_down_when_the_estimate_was_optimistic() -> None:
    class Swapping(FakeDevice):
        """Derivations above 32 MiB are four times slower than the estimate predicts."""

        def kdf(self, passphrase: bytes, salt: bytes, params: Argon2idParams) -> bytes:
            self.calls.append(params)
            factor = 4.0 if params.memory_kib > 32 * 1024 else 1.0
            self.now += self.rate * factor * params.work / 1024
            return bytes(32)

    device = Swapping(0.0002)
    # Estimate says level 8; measuring steps down 8 -> 7 -> 6 -> 5 (128 x 0.8 ms = 102 ms,
    # within 25% of the 93.75 ms budget).
    assert calibrate(0.75, clock=device.clock, kdf=device.kdf) == COST_TABLE[5]
    assert COST_TABLE[8] in device.calls


def test_calibrate_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        calibrate(0)
    with pytest.raises(ValueError):
        calibrate(1, slots=0)
