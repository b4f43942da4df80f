"""SQLiteStore beyond the shared contract: durability, files on disk, schema versions."""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import signal
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from kith.errors import StoreUnavailable
from kith.relay.store.base import Limits, NoQueue, QueueRecord
from kith.relay.store.sqlite import SCHEMA_VERSION, SchemaError, SQLiteStore, StoreInUse

from .conftest import Hints, new_record

NOW = 1_700_000_000
LIMITS = Limits()
BIG = Limits(max_messages=10**6, max_bytes=10**12)


def mid() -> bytes:
    return os.urandom(16)


async def opened(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.start(Hints())
    return store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def files_containing(directory: Path, needle: bytes) -> list[str]:
    return [p.name for p in directory.iterdir() if needle in p.read_bytes()]


# ---------------------------------------------------------------------------- files


async def test_database_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await opened(db)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
        files = names_in(tmp_path)
        assert files == ["relay.db", "relay.db-lock", "relay.db-shm", "relay.db-wal"]
        for name in files:
            assert mode(tmp_path / name) == 0o600, name
    finally:
        await store.close()


async def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await opened(db)
    await store.close()
    db.chmod(0o644)
    store = await opened(db)
    try:
        assert mode(db) == 0o600
    finally:
        await store.close()


def test_schema_ships_as_package_data() -> None:
    res = importlib.resources.files("kith.relay.store").joinpath(
        f"sqlite_schema_v{SCHEMA_VERSION}.sql"
    )
    assert res.is_file()
    assert "CREATE TABLE schema_version" in res.read_text(encoding="utf-8")


async def test_acknowledged_ciphertext_is_erased_from_the_files(tmp_path: Path) -> None:
    """secure_delete: after an ack and a clean close, the bytes are gone from disk."""
    marker = b"ACKED-CIPHERTEXT-MARKER-" * 40
    store = await opened(tmp_path / "relay.db")
    rec = new_record()
    await store.create_queue(rec, NOW)
    ids = [mid() for _ in range(20)]
    for m in ids:
        await store.put_message(rec.sender_id, m, marker, NOW, LIMITS)
    for m in ids:
        assert await store.ack(rec.recipient_id, m)
    await store.close()
    assert files_containing(tmp_path, marker[:24]) == []


# ---------------------------------------------------------------------------- schema


async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await opened(db)
    await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    before = db.read_bytes()
    with pytest.raises(SchemaError, match=r"newer"):
        await opened(db)
    assert db.read_bytes() == before
    # The refusal released the file: nothing is left locked or half-open.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (
            SCHEMA_VERSION + 1,
        )
    conn.close()


async def test_an_older_schema_is_upgraded_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade path, exercised with a stand-in v2 (no real one exists yet)."""
    db = tmp_path / "relay.db"
    store = await opened(db)
    rec = new_record()
    await store.create_queue(rec, NOW)
    await store.put_message(rec.sender_id, mid(), b"kept", NOW, LIMITS)
    await store.close()

    from kith.relay.store import sqlite as backend

    real = backend._schema_sql
    upgrade = "ALTER TABLE queues ADD COLUMN note BLOB; UPDATE schema_version SET version = 2;"
    monkeypatch.setattr(backend, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(
        backend,
        "_schema_sql",
        lambda name: upgrade if name == "sqlite_upgrade_v1_to_v2.sql" else real(name),
    )
    store = await opened(db)
    try:
        got = await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
        assert [m.body for m in got] == [b"kept"]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (2,)
        assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(queues)")}
    conn.close()


async def test_a_missing_or_broken_upgrade_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "relay.db"
    await (await opened(db)).close()
    from kith.relay.store import sqlite as backend

    real = backend._schema_sql
    monkeypatch.setattr(backend, "SCHEMA_VERSION", 2)
    with pytest.raises(SchemaError, match="no upgrade path"):
        await opened(db)
    # An upgrade script that forgets to bump the version is rolled back.
    monkeypatch.setattr(
        backend,
        "_schema_sql",
        lambda name: "CREATE TABLE half (x);" if "upgrade" in name else real(name),
    )
    with pytest.raises(SchemaError, match="v1, not v2"):
        await opened(db)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
    conn.close()
    assert "half" not in tables


async def test_a_database_that_is_not_a_relay_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.close()
    db.chmod(0o640)
    before = db.read_bytes()
    with pytest.raises(SchemaError, match=r"not a kith relay store"):
        await opened(db)
    # Not ours: not switched to WAL, not re-permissioned, not written.
    assert db.read_bytes() == before
    assert mode(db) == 0o640
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"contacts"}


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaError):
        await opened(db)


async def test_a_second_process_cannot_open_a_database_in_use(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    first = await opened(db)
    try:
        with pytest.raises(StoreInUse):
            await opened(db)
    finally:
        await first.close()
    second = await opened(db)  # free again once the first has closed
    await second.close()


# ---------------------------------------------------------------------------- reads and writes


async def test_a_read_after_an_awaited_write_sees_it(tmp_path: Path) -> None:
    store = await opened(tmp_path / "relay.db")
    try:
        recs = [new_record() for _ in range(5)]
        for rec in recs:
            await store.create_queue(rec, NOW)
        noise = [
            asyncio.create_task(store.put_message(recs[i % 4].sender_id, mid(), b"n", NOW, BIG))
            for i in range(400)
        ]
        rec = recs[4]
        last = 0
        for i in range(100):
            m = mid()
            ref = await store.put_message(rec.sender_id, m, b"%d" % i, NOW, BIG)
            got = await store.pending(rec.recipient_id, last, 10, NOW, BIG)
            assert [g.msg_id for g in got] == [m]
            last = ref.seq
            assert await store.ack(rec.recipient_id, m)
            assert await store.pending(rec.recipient_id, 0, 10, NOW, BIG) == []
        key = os.urandom(32)
        await store.secure_queue(rec.recipient_id, key)
        secured = await store.queue_by_sender(rec.sender_id)
        assert secured is not None and secured.sender_key == key
        await asyncio.gather(*noise)
    finally:
        await store.close()


async def test_close_finishes_writes_already_queued(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await opened(db)
    rec = new_record()
    await store.create_queue(rec, NOW)
    tasks = [
        asyncio.create_task(store.put_message(rec.sender_id, mid(), b"x", NOW, BIG))
        for _ in range(300)
    ]
    await asyncio.sleep(0)  # every task has queued its write
    await store.close()
    refs = await asyncio.gather(*tasks)
    assert sorted(r.seq for r in refs) == list(range(1, 301))
    store = await opened(db)
    try:
        assert (await store.stats())["messages"] == 300
    finally:
        await store.close()


async def test_one_failing_write_does_not_sink_its_batch(tmp_path: Path) -> None:
    store = await opened(tmp_path / "relay.db")
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO queues (recipient_id) VALUES (x'00')")  # violates NOT NULL

        puts = [store.put_message(rec.sender_id, mid(), b"x", NOW, BIG) for _ in range(10)]
        results = await asyncio.gather(
            *puts[:5], store._submit(broken), *puts[5:], return_exceptions=True
        )
        assert isinstance(results[5], sqlite3.IntegrityError)
        ok = [r for i, r in enumerate(results) if i != 5]
        assert [r.seq for r in ok] == list(range(1, 11))  # type: ignore[union-attr]
        assert (await store.stats())["messages"] == 10
    finally:
        await store.close()


async def test_refusals_inside_a_batch_leave_the_rest_committed(tmp_path: Path) -> None:
    store = await opened(tmp_path / "relay.db")
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        results = await asyncio.gather(
            store.put_message(rec.sender_id, mid(), b"a", NOW, BIG),
            store.put_message(os.urandom(16), mid(), b"b", NOW, BIG),
            store.put_message(rec.sender_id, mid(), b"c", NOW, BIG),
            return_exceptions=True,
        )
        assert isinstance(results[1], NoQueue)
        got = await store.pending(rec.recipient_id, 0, 10, NOW, BIG)
        assert [m.body for m in got] == [b"a", b"c"]
    finally:
        await store.close()


async def test_a_store_that_is_not_started_refuses_calls(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    with pytest.raises(StoreUnavailable):
        await store.put_message(os.urandom(16), mid(), b"x", NOW, LIMITS)
    with pytest.raises(StoreUnavailable):
        await store.stats()


# ---------------------------------------------------------------------------- kill -9

_CHILD = """
import asyncio, os, sys
from kith.relay.store.base import Limits, QueueRecord
from kith.relay.store.sqlite import SQLiteStore

async def main() -> None:
    store = SQLiteStore(sys.argv[1])
    await store.start(lambda rid: None)
    rid, sid = bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
    await store.create_queue(QueueRecord(rid, sid, bytes(32)), 0)
    limits = Limits(max_messages=10**6, max_bytes=10**12)

    async def one(i: int) -> None:
        msg_id = i.to_bytes(16, "big")
        await store.put_message(sid, msg_id, os.urandom(256), 0, limits)
        os.write(1, b"P %d\\n" % i)         # only after put_message returned (one write)
        if i % 3 == 0:
            await store.ack(rid, msg_id)
            os.write(1, b"A %d\\n" % i)     # only after ack returned

    i = 0
    while True:
        await asyncio.gather(*(one(i + k) for k in range(64)))
        i += 64

asyncio.run(main())
"""


async def test_kill_9_loses_no_acknowledged_put_and_resurrects_no_acked_message(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    rec = new_record()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(db), rec.recipient_id.hex(), rec.sender_id.hex(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    put: set[int] = set()
    acked: set[int] = set()
    try:
        # Read until the burst is well under way, then kill it mid-flight.
        async with asyncio.timeout(20):
            while len(put) < 1500:
                line = await child.stdout.readline()
                if not line:
                    break
                kind, num = line.split()
                (put if kind == b"P" else acked).add(int(num))
        child.send_signal(signal.SIGKILL)
        rest, err = await asyncio.wait_for(child.communicate(), 10)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    for line in rest.splitlines():
        kind, num = line.split()
        (put if kind == b"P" else acked).add(int(num))
    assert len(put) >= 1500, err.decode(errors="replace")
    assert acked

    store = await opened(db)
    try:
        got = await store.pending(rec.recipient_id, 0, 10**6, 0, BIG)  # the child stored at t=0
        present = {int.from_bytes(m.msg_id, "big") for m in got}
        # A message whose ack was under way at the kill may be gone without its "A" line.
        never_acked = {i for i in put if i % 3 != 0}
        assert never_acked <= present, "an acknowledged put was lost"
        assert len(never_acked) > 900
        assert not (acked & present), "an acknowledged ack was undone"
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # The recovered queue keeps working.
        await store.put_message(rec.sender_id, mid(), b"after", NOW, BIG)
    finally:
        await store.close()


async def test_reopened_queue_record_round_trips(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await opened(db)
    rec = QueueRecord(os.urandom(16), os.urandom(16), os.urandom(32), os.urandom(32))
    await store.create_queue(rec, NOW)
    await store.close()
    store = await opened(db)
    try:
        assert await store.queue_by_recipient(rec.recipient_id) == rec
        assert await store.stats() == {"queues": 1, "messages": 0, "bytes": 0}
    finally:
        await store.close()
