"""Vault benchmark: unlock time at calibrated Argon2id cost, and how fast messages are stored.

Run:  .venv/bin/python bench/vault.py [--rows 400] [--batch 100] [--target 0.75]

Prints:
- the cost level calibration picked on this machine, and the median of 5 unlocks with it
  (the figure a person waits for; the design target is 0.5-1 s for the whole unlock);
- rows of 1 KiB stored per second through ``UnlockedVault.db.put``, one durable commit per row
  (a message arriving and being stored) and ``--batch`` rows per commit (a backlog);
- the same two rates with raw ``sqlcipher3`` on a database opened with the same pragmas and the
  same table, and the ratio vault / raw: the cost of kith's typed layer, not of SQLCipher.

Everything happens in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import sqlcipher3

from kith.vault import Vault
from kith.vault.params import calibrate, level_of

ROW = 1024
PASSPHRASE = "benchmark passphrase, not a secret"  # noqa: S105 (a throwaway benchmark vault)
UPSERT = (
    "INSERT INTO kv (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _rate(
    rows: int,
    batch: int,
    put: Callable[[str, bytes], None],
    begin: Callable[[], AbstractContextManager[object]],
) -> float:
    payload = os.urandom(ROW)
    start = time.perf_counter()
    i = 0
    while i < rows:
        n = min(batch, rows - i)
        if batch == 1:
            put(f"msg/{i:08d}", payload)
        else:
            with begin():
                for j in range(n):
                    put(f"msg/{i + j:08d}", payload)
        i += n
    return rows / (time.perf_counter() - start)


class _RawTx(AbstractContextManager[object]):
    def __init__(self, conn: sqlcipher3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> object:
        self.conn.execute("BEGIN IMMEDIATE")
        return None

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("COMMIT")


def _raw_connection(path: pathlib.Path) -> sqlcipher3.Connection:
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA cipher_log = off")
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute("PRAGMA cipher_memory_security = ON")
    conn.set_key(b"x'" + os.urandom(32).hex().encode() + b"'")
    for pragma in (
        "journal_mode = DELETE",
        "secure_delete = ON",
        "temp_store = MEMORY",
        "synchronous = FULL",
        "foreign_keys = ON",
    ):
        conn.execute(f"PRAGMA {pragma}").fetchall()
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
    return conn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="rows per store measurement")
    parser.add_argument("--batch", type=int, default=100, help="rows per commit, batched run")
    parser.add_argument("--target", type=float, default=0.75, help="unlock target, seconds")
    args = parser.parse_args()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPU(s), Python {platform.python_version()}, load {load}")
    params = calibrate(args.target)
    level = level_of(params)
    print(
        f"calibrated level {level}: Argon2id m={params.memory_kib // 1024} MiB "
        f"t={params.time_cost} p={params.parallelism} (target {args.target:.2f} s for 8 slots)"
    )

    with tempfile.TemporaryDirectory(prefix="kith-bench-") as tmp:
        root = pathlib.Path(tmp)
        Vault.create(root / "vault", PASSPHRASE, params).close()
        unlocks = []
        for _ in range(5):
            start = time.perf_counter()
            Vault.unlock(root / "vault", PASSPHRASE).close()
            unlocks.append(time.perf_counter() - start)
        print(
            f"unlock: median {statistics.median(unlocks):.3f} s over 5 "
            f"(min {min(unlocks):.3f}, max {max(unlocks):.3f})"
        )

        results: dict[str, float] = {}
        with Vault.unlock(root / "vault", PASSPHRASE) as vault:
            db = vault.db
            results["vault, 1 row/commit"] = _rate(args.rows, 1, db.put, db.transaction)
            results[f"vault, {args.batch} rows/commit"] = _rate(
                args.rows * 5, args.batch, db.put, db.transaction
            )
        conn = _raw_connection(root / "raw.db")
        try:

            def raw_put(key: str, value: bytes) -> None:
                conn.execute(UPSERT, (key, value))

            results["raw, 1 row/commit"] = _rate(args.rows, 1, raw_put, lambda: _RawTx(conn))
            results[f"raw, {args.batch} rows/commit"] = _rate(
                args.rows * 5, args.batch, raw_put, lambda: _RawTx(conn)
            )
        finally:
            conn.close()

    for name, rate in results.items():
        print(f"store {ROW} B rows, {name}: {rate:,.0f} rows/s")
    single = results["vault, 1 row/commit"] / results["raw, 1 row/commit"]
    batched = (
        results[f"vault, {args.batch} rows/commit"] / results[f"raw, {args.batch} rows/commit"]
    )
    print(f"ratio vault/raw: {single:.2f} (1 row/commit), {batched:.2f} ({args.batch} rows/commit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
