"""The one table of Argon2id cost parameters a vault may use, and its calibration.

Why a table and not free numbers: the key file is magic-free and should look like random bytes
(docs/protocol/vault.md). Free parameters stored in the clear have structure (small integers,
zero bytes) that marks a file as a kith key file. A vault instead stores one *level*, a 4-bit
index into :data:`COST_TABLE`, in the low nibble of a byte whose high nibble is random. All 16
values are defined, so every possible byte is a valid header and a random file parses as a key
file just as well as a real one.

Every slot of a vault uses the same level, so every slot costs the same to try: unlock time
does not depend on which slot matches or how many are in use.

Levels 0 and 1 exist for tests only and are below any published recommendation;
:func:`kith.vault.Vault.create` refuses them unless told loudly that this is a test.
Level 2 is the OWASP minimum for Argon2id (19 MiB, 2 passes); calibration never goes lower,
even on a device where that is slower than the target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from kith.crypto.kdf import Argon2idParams, argon2id
from kith.vault.errors import UnsupportedParams

_MiB: Final = 1024


def _p(mib: int, t: int) -> Argon2idParams:
    return Argon2idParams(memory_kib=mib * _MiB, time_cost=t, parallelism=1)


#: Index = level stored in a key file. Ordered by cost (memory x passes). One lane each: a
#: vault runs one derivation per slot, sequentially, so peak memory is one table entry.
#: NEVER reorder or change an entry: existing vaults name their level by index.
COST_TABLE: Final[tuple[Argon2idParams, ...]] = (
    _p(8, 1),  # 0  tests only
    _p(16, 1),  # 1  tests only
    _p(19, 2),  # 2  OWASP minimum; calibration floor
    _p(32, 2),  # 3
    _p(46, 2),  # 4
    _p(64, 2),  # 5
    _p(64, 3),  # 6  RFC 9106 second recommendation's memory and passes
    _p(96, 3),  # 7
    _p(128, 3),  # 8
    _p(192, 3),  # 9
    _p(256, 3),  # 10
    _p(384, 3),  # 11
    _p(512, 3),  # 12
    _p(768, 3),  # 13
    _p(1024, 3),  # 14
    _p(1024, 4),  # 15
)
LEVEL_BITS: Final = 4
if len(COST_TABLE) != 1 << LEVEL_BITS:  # every possible nibble must name an entry
    raise RuntimeError("COST_TABLE must have exactly 16 entries")

#: Levels below any recommendation. They exist so tests run fast with the real KDF.
INSECURE_LEVELS: Final = frozenset({0, 1})
CALIBRATION_FLOOR: Final = 2

#: 8 MiB, one pass. Unlock with 8 slots takes tens of milliseconds: fine for tests, and a
#: disaster for a real vault. The name is the warning.
INSECURE_FAST_PARAMS_FOR_TESTS_ONLY: Final = COST_TABLE[0]

#: Named entries for callers that do not calibrate (for example a fixed server-side policy).
MINIMUM: Final = COST_TABLE[2]
INTERACTIVE: Final = COST_TABLE[4]
MODERATE: Final = COST_TABLE[6]
SENSITIVE: Final = COST_TABLE[10]

#: Default target for a whole unlock (all slots): the middle of the 0.5-1 s the design asks.
DEFAULT_TARGET_SECONDS: Final = 0.75
#: Default cap on memory for one derivation; phones with 2-3 GiB of RAM cope with this.
DEFAULT_MAX_MEMORY_KIB: Final = 512 * _MiB


def level_of(params: Argon2idParams) -> int:
    """The table index of ``params``; :class:`UnsupportedParams` if they are not in the table."""
    for level, entry in enumerate(COST_TABLE):
        if entry == params:
            return level
    raise UnsupportedParams("Argon2id parameters must be an entry of kith.vault.params.COST_TABLE")


def params_for_level(level: int) -> Argon2idParams:
    if not 0 <= level < len(COST_TABLE):
        raise UnsupportedParams("no such cost level")
    return COST_TABLE[level]


Kdf = Callable[[bytes, bytes, Argon2idParams], bytes]
Clock = Callable[[], float]


def _time_one(params: Argon2idParams, clock: Clock, kdf: Kdf) -> float:
    start = clock()
    kdf(b"kith calibration", b"\x00" * 16, params)
    return clock() - start


def calibrate(
    target_seconds: float = DEFAULT_TARGET_SECONDS,
    *,
    slots: int = 8,
    max_memory_kib: int = DEFAULT_MAX_MEMORY_KIB,
    clock: Clock = time.perf_counter,
    kdf: Kdf = argon2id,
) -> Argon2idParams:
    """Pick the costliest table entry whose unlock (``slots`` derivations) fits the target.

    Measures a mid-table entry, extrapolates (derivation time is close to linear in
    memory x passes), then measures the chosen entry and steps down while a real unlock
    would exceed the target by more than 25%. Never goes below :data:`CALIBRATION_FLOOR`.
    ``clock`` and ``kdf`` are parameters so tests can drive this without burning CPU.
    """
    if not 0 < target_seconds <= 60:
        raise ValueError("target_seconds must be in (0, 60]")
    if not 1 <= slots <= 16:
        raise ValueError("slots must be in [1, 16]")
    reference = COST_TABLE[3]
    _time_one(COST_TABLE[CALIBRATION_FLOOR], clock, kdf)  # warm up caches and the allocator
    per_work = min(_time_one(reference, clock, kdf) for _ in range(2)) / reference.work
    budget = target_seconds / slots
    level = CALIBRATION_FLOOR
    for candidate in range(len(COST_TABLE) - 1, CALIBRATION_FLOOR - 1, -1):
        entry = COST_TABLE[candidate]
        if entry.memory_kib <= max_memory_kib and entry.work * per_work <= budget:
            level = candidate
            break
    while level > CALIBRATION_FLOOR and _time_one(COST_TABLE[level], clock, kdf) > budget * 1.25:
        level -= 1
    return COST_TABLE[level]
