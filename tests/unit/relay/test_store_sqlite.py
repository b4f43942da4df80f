"""SQLiteStore beyond the shared contract: durability, files on disk, schema versions."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kith.errors import StoreUnavailable
from kith.relay.store import sqlite as sqlite_store
from kith.relay.store.base import (
    USE_GRANULE,
    DuplicateId,
    Limits,
    NoQueue,
    NotAuthorized,
    QueueRecord,
    QuotaExceeded,
    StoredRef,
)
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


async def opened_at_v1(path: Path) -> SQLiteStore:
    """A store on a file created at schema v1, as a relay of that release left it.

    The create step reads SCHEMA_VERSION once, so the shipped v1 script makes the file; every
    op after that uses only columns v1 and v2 share.
    """
    from kith.relay.store import sqlite as backend

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "SCHEMA_VERSION", 1)
        store = await opened(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
    conn.close()
    return store


def schema_of(path: Path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT type, name, tbl_name FROM sqlite_master").fetchall()
    conn.close()
    return {(t, n, tn) for t, n, tn in rows}


async def test_a_new_database_is_created_at_v3_without_rowids(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 3
    db = tmp_path / "relay.db"
    await (await opened(db)).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (3,)
        for table in ("messages", "queues"):
            with pytest.raises(sqlite3.OperationalError, match="rowid"):
                conn.execute(f"SELECT rowid FROM {table}")  # noqa: S608 -- fixed names
    conn.close()


async def test_a_v1_database_is_upgraded_with_every_message_in_queue_order(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    store = await opened_at_v1(db)
    plain, secured = new_record(), new_record(sender_key=os.urandom(32))
    expected: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
    for rec in (plain, secured):
        await store.create_queue(rec, NOW)
        expected[rec.recipient_id] = []
    for i in range(12):  # interleaved, so v1 rowids alternate between the two queues
        rec = (plain, secured)[i % 2]
        m, body = mid(), f"message {i}".encode()
        ref = await store.put_message(rec.sender_id, m, body, NOW + i, LIMITS, rec.sender_key)
        expected[rec.recipient_id].append((ref.seq, m, body))
    gone = expected[plain.recipient_id].pop(2)  # a gap in the numbering survives the copy
    assert await store.ack(plain.recipient_id, gone[1])
    await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("SELECT rowid FROM messages").fetchall()  # v1: a rowid table
    conn.close()

    store = await opened(db)
    try:
        for rid, want in expected.items():
            got = await store.pending(rid, 0, 100, NOW, LIMITS)
            assert [(g.seq, g.msg_id, g.body) for g in got] == want
        kept = sum(len(b) for want in expected.values() for _, _, b in want)
        assert await store.stats() == {"queues": 2, "messages": 11, "bytes": kept}
        # The counters kept by the triggers carry on: seq stays contiguous, acks count out.
        ref = await store.put_message(plain.sender_id, mid(), b"after", NOW, LIMITS)
        assert ref.seq == 7  # this queue had seq 1..6 in v1 (one acked: a gap, not a reuse)
        assert (await store.stats())["messages"] == 12
        assert await store.ack(secured.recipient_id, expected[secured.recipient_id][0][1])
        assert (await store.stats())["messages"] == 11
        # A secured queue stays secured; expiry (which used the rowid in v1) still works.
        with pytest.raises(NotAuthorized):
            await store.put_message(secured.sender_id, mid(), b"x", NOW, LIMITS)
        assert await store.expire(NOW + LIMITS.ttl_seconds + 100, LIMITS) == 11
    finally:
        await store.close()

    fresh = tmp_path / "fresh.db"
    await (await opened(fresh)).close()
    assert schema_of(db) == schema_of(fresh)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (3,)
        with pytest.raises(sqlite3.OperationalError, match="rowid"):
            conn.execute("SELECT rowid FROM messages")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


async def test_a_missing_or_broken_upgrade_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "relay.db"
    store = await opened_at_v1(db)
    rec = new_record()
    await store.create_queue(rec, NOW)
    kept = mid()
    await store.put_message(rec.sender_id, kept, b"kept", NOW, LIMITS)
    await store.close()
    from kith.relay.store import sqlite as backend

    real = backend._schema_sql
    upgrade = real("sqlite_upgrade_v1_to_v2.sql")
    assert upgrade is not None
    monkeypatch.setattr(
        backend, "_schema_sql", lambda name: None if "upgrade" in name else real(name)
    )
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
    # The real script failing half-way (after it dropped the v1 table) is rolled back whole.
    halfway = upgrade.replace(
        "UPDATE schema_version", "SELECT * FROM no_such_table; UPDATE schema_version"
    )
    monkeypatch.setattr(
        backend, "_schema_sql", lambda name: halfway if "upgrade" in name else real(name)
    )
    with pytest.raises(StoreUnavailable, match="no_such_table"):
        await opened(db)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
        assert conn.execute("SELECT rowid, msg_id FROM messages").fetchall() == [(1, kept)]
    conn.close()
    assert "half" not in tables
    assert "messages_v2" not in tables


async def opened_at_v2(path: Path) -> SQLiteStore:
    """A store on a file created at schema v2 (no use marks), as the previous release left it.

    Only create, put, ack and look-ups are used on it: their SQL is the same in v2 and v3 (the
    v3 triggers mark queues used), whereas marking a queue on ``pending`` needs v3.
    """
    from kith.relay.store import sqlite as backend

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "SCHEMA_VERSION", 2)
        store = await opened(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (2,)
    conn.close()
    return store


async def test_a_v2_database_is_upgraded_and_gives_every_old_queue_a_full_ttl(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    store = await opened_at_v2(db)
    old = new_record()
    await store.create_queue(old, NOW)  # years before the upgrade
    kept = mid()
    await store.put_message(old.sender_id, kept, b"waiting", NOW, LIMITS)
    await store.close()

    store = await opened(db)
    try:
        # Not deleted for being old: v2 never recorded use, so the upgrade counts as one.
        today = int(time.time())
        assert await store.expire_queues(today, LIMITS) == 0
        assert await store.expire_queues(today + LIMITS.queue_ttl_seconds - 1, LIMITS) == 0
        assert await store.queue_by_recipient(old.recipient_id) == old
        got = await store.pending(old.recipient_id, 0, 10, NOW, LIMITS)
        assert [m.msg_id for m in got] == [kept]
        # New queues and puts keep their marks through the upgraded triggers.
        new = new_record()
        far = today + 400 * 24 * 3600
        await store.create_queue(new, far)
        ref = await store.put_message(old.sender_id, mid(), b"late", far, LIMITS)
        assert ref.seq == 2
        gone = far + LIMITS.queue_ttl_seconds + USE_GRANULE
        assert await store.expire_queues(gone - 2 * USE_GRANULE, LIMITS) == 0
        assert await store.expire_queues(gone, LIMITS) == 2
        assert await store.stats() == {"queues": 0, "messages": 0, "bytes": 0}
    finally:
        await store.close()

    fresh = tmp_path / "fresh.db"
    await (await opened(fresh)).close()
    assert schema_of(db) == schema_of(fresh)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (3,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    conn.close()


async def test_the_use_mark_on_disk_is_no_finer_than_a_week(tmp_path: Path) -> None:
    """What a seizer reads: one mark per queue, a multiple of a week, whatever was done when."""
    db = tmp_path / "relay.db"
    store = await opened(db)
    recs = [new_record() for _ in range(5)]
    for i, rec in enumerate(recs):
        t = NOW + i * 3 * 3600 + 17 * i
        await store.create_queue(rec, t)
        if i % 2:
            await store.put_message(rec.sender_id, mid(), b"x", t + 3600, LIMITS)
        else:
            await store.pending(rec.recipient_id, 0, 10, t + 7200, LIMITS)
    await store.close()
    with sqlite3.connect(db) as conn:
        marks = [r[0] for r in conn.execute("SELECT last_used FROM queues")]
    conn.close()
    assert len(marks) == 5
    assert all(m % USE_GRANULE == 0 for m in marks)
    assert set(marks) == {NOW - NOW % USE_GRANULE}


# ---------------------------------------------------------------------------- the seizer


async def fill_like_a_busy_relay(store: SQLiteStore) -> list[bytes]:
    """Store a conversation, a circle and strangers, interleaved; return msg_ids by arrival.

    All in one minute, as the relay rounds received times down to the minute: only an
    ordering key finer than received_at could put these messages back in arrival order.
    """
    # Queues are created in descending id order, so creation order is not id order.
    recs = sorted((new_record() for _ in range(9)), key=lambda r: r.recipient_id, reverse=True)
    for rec in recs:
        await store.create_queue(rec, NOW)
    a, b, c1, c2, c3, c4, u1, u2, u3 = recs
    circle = [c1, c2, c3, c4]
    pattern = [a, b, a, b, *circle, u1, a, b, *circle, u2, b, a, u3, *circle, a, b]
    arrival = []
    for i, rec in enumerate(pattern):
        m = mid()
        await store.put_message(rec.sender_id, m, f"ct {i}".encode() * 50, NOW, BIG)
        arrival.append(m)
    return arrival


def orders_a_seizer_can_read(db: Path) -> tuple[list[list[bytes]], list[bytes]]:
    """Every ordering of the messages a plain sqlite3 reader of the file can get, as msg_id
    lists: each table's rowid where it has one, each column of messages, a full scan.
    Also returns the recipient ids in the order a full scan of messages yields them."""
    orders: list[list[bytes]] = []
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert set(tables) == {"schema_version", "queues", "messages"}
        for table in tables:
            try:
                rowids = conn.execute(f"SELECT rowid FROM {table}").fetchall()  # noqa: S608
            except sqlite3.OperationalError:
                continue
            if table == "messages":
                by_rowid = conn.execute("SELECT msg_id FROM messages ORDER BY rowid")
                orders.append([bytes(r[0]) for r in by_rowid])
            else:  # schema_version: one row, it orders nothing
                assert table == "schema_version" and len(rowids) == 1
        for (column,) in conn.execute("SELECT name FROM pragma_table_info('messages')"):
            by_column = conn.execute(f"SELECT msg_id FROM messages ORDER BY {column}")  # noqa: S608 -- a column name read from the schema
            orders.append([bytes(r[0]) for r in by_column])
        scan = conn.execute("SELECT recipient_id, msg_id, body FROM messages NOT INDEXED")
        rows = [(bytes(r), bytes(m)) for r, m, _ in scan]
        orders.append([m for _, m in rows])
        queue_scan = [bytes(r[0]) for r in conn.execute("SELECT recipient_id FROM queues")]
        assert queue_scan == sorted(queue_scan)  # queues: in id order, not creation order
    conn.close()
    return orders, [r for r, _ in rows]


async def test_a_seized_database_does_not_give_away_arrival_order(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await opened(db)
    arrival = await fill_like_a_busy_relay(store)
    await store.close()
    orders, scanned = orders_a_seizer_can_read(db)
    assert arrival not in orders
    # The physical order is by (random) queue id, then by the queue's own counter.
    assert scanned == sorted(scanned)
    assert len(set(scanned)) == 9
    with sqlite3.connect(db) as conn:
        with pytest.raises(sqlite3.OperationalError, match="rowid"):
            conn.execute("SELECT rowid FROM messages")
        with pytest.raises(sqlite3.OperationalError, match="rowid"):
            conn.execute("SELECT _rowid_, oid FROM queues")
    conn.close()


async def test_the_seizer_check_catches_a_v1_database(tmp_path: Path) -> None:
    """The attack above works on v1: the check is able to fail."""
    db = tmp_path / "relay.db"
    store = await opened_at_v1(db)
    arrival = await fill_like_a_busy_relay(store)
    await store.close()
    orders, _ = orders_a_seizer_can_read(db)
    assert arrival in orders


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
            asyncio.ensure_future(store.put_message(recs[i % 4].sender_id, mid(), b"n", NOW, BIG))
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
        asyncio.ensure_future(store.put_message(rec.sender_id, mid(), b"x", NOW, BIG))
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


# ---------------------------------------------------------------------------- staging


async def staging(path: Path, seconds: float, hints: Hints | None = None) -> SQLiteStore:
    store = SQLiteStore(path, stage_seconds=seconds)
    await store.start(hints if hints is not None else Hints())
    return store


def record_writes(store: SQLiteStore, recipient_id: bytes) -> list[int]:
    """The seqs of one queue's messages, in the order they are handed to the writer."""
    order: list[int] = []
    enqueue = store._enqueue

    def recording(job: object, fut: asyncio.Future[object] | None) -> None:
        order.extend(
            put.ref.seq for put in getattr(job, "puts", []) if put.ref.recipient_id == recipient_id
        )
        enqueue(job, fut)

    store._enqueue = recording  # type: ignore[method-assign]
    return order


def delivered(sink: Callable[[StoredRef], object] | None = None) -> Callable[[StoredRef], bool]:
    """An ``accepted`` callback that says the message went to a subscriber: the store then
    holds it, hoping for its ACK. (A message nobody was sent is written at once.)"""

    def accepted(ref: StoredRef) -> bool:
        if sink is not None:
            sink(ref)
        return True

    return accepted


async def test_a_message_acknowledged_while_staged_never_reaches_the_disk(
    tmp_path: Path,
) -> None:
    """The relay pushes a staged message at once; if the recipient acknowledges it before it
    is due, it is never written. A second message, left unacknowledged, is written: the same
    search finds it, so the search works."""
    online = b"DELIVERED-WHILE-ONLINE-" * 40
    waiting = b"WAITING-FOR-RECIPIENT--" * 40
    store = await staging(tmp_path / "relay.db", 0.5)
    rec = new_record()
    await store.create_queue(rec, NOW)
    accepted: asyncio.Queue[StoredRef] = asyncio.Queue()
    m1, m2 = mid(), mid()
    put1 = store.put_message(
        rec.sender_id, m1, online, NOW, LIMITS, accepted=delivered(accepted.put_nowait)
    )
    ref = await asyncio.wait_for(accepted.get(), 5)
    assert ref.seq == 1 and not put1.done()  # numbered and deliverable, not yet durable
    assert await store.ack(rec.recipient_id, m1) is True
    assert await put1 == ref  # acknowledged first: the put is complete without a write
    assert (await store.put_message(rec.sender_id, m2, waiting, NOW, LIMITS)).seq == 2
    await store.close()
    assert files_containing(tmp_path, online[:23]) == []
    assert files_containing(tmp_path, waiting[:23]) != []


async def test_a_put_completes_only_once_its_message_is_written(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await staging(db, 0.2)
    rec = new_record()
    await store.create_queue(rec, NOW)
    put = store.put_message(rec.sender_id, mid(), b"body", NOW, LIMITS, accepted=delivered())
    await asyncio.sleep(0.05)
    assert not put.done()
    assert await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS) == []  # not written yet
    ref = await asyncio.wait_for(put, 5)
    got = await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert [m.seq for m in got] == [ref.seq] and got[0].body == b"body"


async def test_close_writes_every_staged_message(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await staging(db, 1.0)
    rec = new_record()
    await store.create_queue(rec, NOW)
    puts = [
        store.put_message(rec.sender_id, mid(), b"x", NOW, BIG, accepted=delivered())
        for _ in range(50)
    ]
    await asyncio.sleep(0.05)
    assert not any(p.done() for p in puts)
    await store.close()
    assert sorted(r.seq for r in await asyncio.gather(*puts)) == list(range(1, 51))
    store = await opened(db)
    try:
        assert (await store.stats())["messages"] == 50
    finally:
        await store.close()


async def test_seqs_of_messages_acknowledged_while_staged_are_never_reused(
    tmp_path: Path,
) -> None:
    """Delivery pushes a message straight away only if its seq follows the last one pushed;
    a seq handed out twice would make the relay skip a message. Acknowledged-while-staged
    messages are never inserted, so their seqs must still be recorded, across a restart."""
    db = tmp_path / "relay.db"
    store = await staging(db, 0.5)
    rec = new_record()
    await store.create_queue(rec, NOW)
    refs: asyncio.Queue[StoredRef] = asyncio.Queue()
    ids = [mid(), mid(), mid()]
    puts = [
        store.put_message(rec.sender_id, m, b"x", NOW, LIMITS, accepted=delivered(refs.put_nowait))
        for m in ids
    ]
    assert [(await refs.get()).seq for _ in ids] == [1, 2, 3]
    for m in ids:
        assert await store.ack(rec.recipient_id, m)
    await asyncio.gather(*puts)
    assert (await store.put_message(rec.sender_id, mid(), b"y", NOW, LIMITS)).seq == 4
    fourth = await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert [m.seq for m in fourth] == [4]
    assert await store.ack(rec.recipient_id, fourth[0].msg_id)
    # The last seq given out was acknowledged while staged; after a restart the next is 6.
    m5 = mid()
    put5 = store.put_message(
        rec.sender_id, m5, b"z", NOW, LIMITS, accepted=delivered(refs.put_nowait)
    )
    assert (await refs.get()).seq == 5
    assert await store.ack(rec.recipient_id, m5)
    await put5
    await store.close()
    store = await opened(db)
    try:
        assert (await store.put_message(rec.sender_id, mid(), b"w", NOW, LIMITS)).seq == 6
    finally:
        await store.close()


async def test_staged_messages_count_against_the_quota(tmp_path: Path) -> None:
    store = await staging(tmp_path / "relay.db", 1.0)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        small = Limits(max_messages=2)
        puts = [
            store.put_message(rec.sender_id, mid(), b"x", NOW, small, accepted=delivered())
            for _ in range(3)
        ]
        with pytest.raises(QuotaExceeded):
            await asyncio.wait_for(puts[2], 0.5)  # refused at once, before anything is written
        assert not puts[0].done() and not puts[1].done()
        await asyncio.gather(*puts[:2])
    finally:
        await store.close()


async def test_a_staged_message_can_be_refused_for_a_duplicate_id(tmp_path: Path) -> None:
    store = await staging(tmp_path / "relay.db", 0.3)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        m = mid()
        first = store.put_message(rec.sender_id, m, b"x", NOW, LIMITS, accepted=delivered())
        with pytest.raises(DuplicateId):
            await store.put_message(rec.sender_id, m, b"y", NOW, LIMITS)  # still staged
        await first
        with pytest.raises(DuplicateId):
            await store.put_message(rec.sender_id, m, b"z", NOW, LIMITS)  # now written
    finally:
        await store.close()


async def test_deleting_a_queue_takes_its_staged_messages(tmp_path: Path) -> None:
    marker = b"STAGED-THEN-QUEUE-DELETED" * 40
    store = await staging(tmp_path / "relay.db", 1.0)
    rec = new_record()
    await store.create_queue(rec, NOW)
    first = store.put_message(rec.sender_id, mid(), b"first", NOW, LIMITS)
    await asyncio.sleep(0.1)  # the store now holds a lease on the queue, and stages
    put = store.put_message(rec.sender_id, mid(), marker, NOW, LIMITS, accepted=delivered())
    await store.delete_queue(rec.recipient_id)
    # Written ahead of the deletion (they came before it), and deleted with the queue.
    assert [(await asyncio.wait_for(f, 5)).seq for f in (first, put)] == [1, 2]
    with pytest.raises(NoQueue):
        await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    await store.close()
    assert files_containing(tmp_path, marker[:25]) == []


async def test_a_put_waiting_for_its_lease_when_the_queue_is_deleted_is_never_stored(
    tmp_path: Path,
) -> None:
    """The put comes before the deletion but its lease is read first: it is refused (the
    queue is gone when it would be written), and a put after the deletion too."""
    marker = b"WAITING-THEN-QUEUE-DELETED" * 40
    store = await staging(tmp_path / "relay.db", 0.05)
    rec = new_record()
    await store.create_queue(rec, NOW)
    seqs: list[int] = []
    before = store.put_message(
        rec.sender_id, mid(), marker, NOW, LIMITS, accepted=lambda r: seqs.append(r.seq)
    )
    delete = asyncio.ensure_future(store.delete_queue(rec.recipient_id))
    await asyncio.sleep(0)  # the deletion is queued behind the lease request
    after = store.put_message(rec.sender_id, mid(), marker, NOW, LIMITS)
    await delete
    for fut in (before, after):
        with pytest.raises(NoQueue):
            await asyncio.wait_for(fut, 5)
    assert seqs == [1]  # numbered (and deliverable) before the deletion, never stored
    await store.close()
    assert files_containing(tmp_path, marker[:25]) == []


async def test_securing_a_queue_while_its_lease_is_granted_binds_every_later_put(
    tmp_path: Path,
) -> None:
    """A lease is read by the writer; KEY arrives while that read is on its way. Puts called
    before KEY are checked against the queue as it was, puts called after against the key:
    one sent without the key after KEY is refused, never staged."""
    store = await staging(tmp_path / "relay.db", 0.05)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        skey = os.urandom(32)
        held = await hold_writer(store, 0.2)  # the lease request and KEY share the next cycle
        before = store.put_message(rec.sender_id, mid(), b"before", NOW, LIMITS)
        secure = asyncio.ensure_future(store.secure_queue(rec.recipient_id, skey))
        await asyncio.sleep(0)
        unkeyed = store.put_message(rec.sender_id, mid(), b"unkeyed", NOW, LIMITS)
        keyed = store.put_message(rec.sender_id, mid(), b"keyed", NOW, LIMITS, skey)
        await held
        await secure
        assert (await asyncio.wait_for(before, 5)).seq == 1
        with pytest.raises(NotAuthorized):
            await asyncio.wait_for(unkeyed, 5)
        assert (await asyncio.wait_for(keyed, 5)).seq == 2
        # With the lease in place, KEY still takes effect for the very next put.
        other = os.urandom(32)
        with pytest.raises(NotAuthorized):
            await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS, other)
        got = await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
        assert [m.body for m in got] == [b"before", b"keyed"]
    finally:
        await store.close()


async def test_securing_a_leased_queue_applies_to_the_next_put_at_once(tmp_path: Path) -> None:
    store = await staging(tmp_path / "relay.db", 1.0)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        staged = store.put_message(rec.sender_id, mid(), b"staged", NOW, LIMITS)
        await asyncio.sleep(0.1)  # leased, and the put is staged
        skey = os.urandom(32)
        secure = asyncio.ensure_future(store.secure_queue(rec.recipient_id, skey))
        await asyncio.sleep(0)
        with pytest.raises(NotAuthorized):
            await asyncio.wait_for(store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS), 5)
        await secure
        # The staged put came before KEY: it is written ahead of it, without waiting a second.
        assert (await asyncio.wait_for(staged, 0.5)).seq == 1
        assert (await store.put_message(rec.sender_id, mid(), b"y", NOW, LIMITS, skey)).seq == 2
    finally:
        await store.close()


async def test_each_queue_reaches_the_writer_in_seq_order(tmp_path: Path) -> None:
    """A message nobody was sent is written at the end of the turn; a delivered one is held.
    When KEY hands the queue's held messages to the writer in that same turn, the unsent one
    (a lower seq) must still go first: a fetch that saw a later seq without an earlier one
    would skip the earlier one for good."""
    store = await staging(tmp_path / "relay.db", 1.0)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        await store.put_message(rec.sender_id, mid(), b"lease", NOW, LIMITS)  # seq 1
        order = record_writes(store, rec.recipient_id)
        # As in the relay: KEY's task is created, then SENDs are read in the same turn; the
        # task runs (and revokes the lease) before the end-of-turn write of the unsent one.
        secure = asyncio.ensure_future(store.secure_queue(rec.recipient_id, os.urandom(32)))
        unsent = store.put_message(rec.sender_id, mid(), b"unsent", NOW, LIMITS)  # seq 2
        sent = store.put_message(
            rec.sender_id, mid(), b"sent", NOW, LIMITS, accepted=delivered()
        )  # seq 3, held
        await secure
        assert [(await f).seq for f in (unsent, sent)] == [2, 3]
        assert order == [2, 3]
    finally:
        await store.close()


async def test_queues_secured_while_leases_are_read_do_not_bounce_for_ever(
    tmp_path: Path,
) -> None:
    """Two queues get KEY while their leases are being read, each with a put called after
    KEY (correctly keyed). Each lease read is older than its queue's KEY, so the later put
    asks again; the second read is newer and must serve it, even while the other queue's
    read is still in flight (found by review: they bounced each other for ever, and close()
    hung)."""
    store = await staging(tmp_path / "relay.db", 0.05)
    q1, q2 = new_record(), new_record()
    for q in (q1, q2):
        await store.create_queue(q, NOW)
    k1, k2 = os.urandom(32), os.urandom(32)
    held = await hold_writer(store, 0.2)
    a1 = store.put_message(q1.sender_id, mid(), b"a1", NOW, LIMITS)
    a2 = store.put_message(q2.sender_id, mid(), b"a2", NOW, LIMITS)
    s1 = asyncio.ensure_future(store.secure_queue(q1.recipient_id, k1))
    s2 = asyncio.ensure_future(store.secure_queue(q2.recipient_id, k2))
    await asyncio.sleep(0)  # both KEYs revoke now
    b1 = store.put_message(q1.sender_id, mid(), b"b1", NOW, LIMITS, k1)
    b2 = store.put_message(q2.sender_id, mid(), b"b2", NOW, LIMITS, k2)
    await held
    await asyncio.gather(s1, s2)
    seqs = [(await asyncio.wait_for(f, 5)).seq for f in (a1, a2, b1, b2)]
    assert seqs == [1, 1, 2, 2]
    await asyncio.wait_for(store.close(), 5)


async def test_a_lease_handed_back_in_a_failing_cycle_keeps_its_seqs(tmp_path: Path) -> None:
    """Seq 2 is pushed and acknowledged while held (never written: the row still says 1).
    KEY hands the lease back in a cycle that fails (disk full) before the hand-back runs.
    The next message must still get 3: given 2 again, a subscriber that was pushed 2 would
    skip it (found by review)."""
    store = await staging(tmp_path / "relay.db", 1.0)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        await store.put_message(rec.sender_id, mid(), b"one", NOW, LIMITS)
        m2 = mid()
        p2 = store.put_message(rec.sender_id, m2, b"two", NOW, LIMITS, accepted=delivered())
        assert await store.ack(rec.recipient_id, m2) is True
        assert (await p2).seq == 2
        await disk_full(store, True)
        held = await hold_writer(store, 0.3)
        big = QueueRecord(os.urandom(16), os.urandom(16), os.urandom(200_000))
        new = asyncio.ensure_future(store.create_queue(big, NOW))  # fails the cycle
        await asyncio.sleep(0)
        key = asyncio.ensure_future(store.secure_queue(rec.recipient_id, os.urandom(32)))
        await asyncio.sleep(0)
        await held
        for fut in (new, key):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(fut, 5)
        await disk_full(store, False)
        ref = await store.put_message(rec.sender_id, mid(), b"three", NOW, LIMITS)
        assert ref.seq == 3
        got = await store.pending(rec.recipient_id, 2, 10, NOW, LIMITS)
        assert [m.body for m in got] == [b"three"]
    finally:
        await store.close()


async def test_an_overflowing_hold_still_writes_each_queue_in_seq_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past _STAGE_MAX the oldest held messages are written at once, in the same turn: an
    unsent message of a queue (lower seq, written at the end of the turn) must still reach
    the writer before that queue's held one (found by review)."""
    monkeypatch.setattr(sqlite_store, "_STAGE_MAX", 4)
    store = await staging(tmp_path / "relay.db", 1.0)
    try:
        x, q = new_record(), new_record()
        for r in (x, q):
            await store.create_queue(r, NOW)
            await store.put_message(r.sender_id, mid(), b"lease", NOW, BIG)
        order = record_writes(store, q.recipient_id)
        futs = [
            store.put_message(x.sender_id, mid(), b"x", NOW, BIG, accepted=delivered())
            for _ in range(5)
        ]
        unsent = store.put_message(q.sender_id, mid(), b"unsent", NOW, BIG)
        sent = store.put_message(q.sender_id, mid(), b"sent", NOW, BIG, accepted=delivered())
        futs += [
            store.put_message(x.sender_id, mid(), b"x", NOW, BIG, accepted=delivered())
            for _ in range(4)
        ]
        await asyncio.gather(unsent, sent, *futs)
        assert order == [2, 3]
    finally:
        await store.close()


async def test_a_lease_handed_back_counts_the_messages_still_on_their_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too many leases: idle ones are handed back, possibly while their unsent messages wait
    for the end of the turn. A new lease read before those are queued would not count them,
    and the queue would hold more than its quota (found by review)."""
    monkeypatch.setattr(sqlite_store, "_LEASE_MAX", 1)
    store = await staging(tmp_path / "relay.db", 1.0)
    try:
        other, q = new_record(), new_record()
        await store.create_queue(other, NOW)
        await store.create_queue(q, NOW)
        await store.put_message(other.sender_id, mid(), b"x", NOW, LIMITS)
        small = Limits(max_messages=2)
        extra: list[asyncio.Future[StoredRef]] = []
        apply = store._apply

        def then_more(events: list[Any]) -> None:
            apply(events)  # the grant for q: p1 staged (unsent), then the leases evicted
            if not extra:  # and, in the same turn, two more SENDs for q
                extra.extend(
                    store.put_message(q.sender_id, mid(), b"p", NOW, small) for _ in range(2)
                )

        store._apply = then_more  # type: ignore[method-assign]
        p1 = store.put_message(q.sender_id, mid(), b"p1", NOW, small)
        await asyncio.wait_for(p1, 5)
        results = await asyncio.wait_for(asyncio.gather(*extra, return_exceptions=True), 5)
        assert isinstance(results[0], StoredRef) and isinstance(results[1], QuotaExceeded)
        assert (await store.stats())["messages"] == 3  # "x", p1 and one more: q holds 2
    finally:
        await store.close()


async def test_the_hold_stretches_while_acks_come_late_and_shrinks_back(
    tmp_path: Path,
) -> None:
    """ACKs that come later than the hold: held messages are written, so the hold grows until
    a round of them is acknowledged while still held (never written). When ACKs come at
    once again, it comes back down to stage_seconds."""
    store = await staging(tmp_path / "relay.db", 0.02)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        await store.put_message(rec.sender_id, mid(), b"lease", NOW, BIG)

        async def round_trip(ack_after: float) -> int:
            """20 pushed messages acknowledged ``ack_after`` s later; how many were elided."""
            before = store.counters()["staged_never_written"]
            ids = [mid() for _ in range(20)]
            puts = [
                store.put_message(rec.sender_id, m, b"x", NOW, BIG, accepted=delivered())
                for m in ids
            ]
            await asyncio.sleep(ack_after)
            for m in ids:
                await store.ack(rec.recipient_id, m)
            await asyncio.gather(*puts)
            return store.counters()["staged_never_written"] - before

        elided = [await round_trip(0.2) for _ in range(5)]
        assert elided[0] == 0  # a 20 ms hold writes them all
        assert 20 in elided[1:4]  # grown (x4 per round: 80 ms, 320 ms, 1 s) past 0.2 s
        assert store._hold > 0.2
        for _ in range(3):  # the check after the late rounds still sees their waits
            assert await round_trip(0) == 20
            await asyncio.sleep(store._hold + 0.1)  # the next check of the hold
        assert store._hold == pytest.approx(0.02)
    finally:
        await store.close()


async def test_a_staged_message_is_hinted_once_written(tmp_path: Path) -> None:
    """A subscriber whose window was full when the message was staged reads it after the
    write; the hint that follows the write is what tells it to."""
    hints = Hints()
    store = await staging(tmp_path / "relay.db", 0.1, hints)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        await store.watch(rec.recipient_id)
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
        await hints.wait_for(rec.recipient_id)
        assert [m.seq for m in await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)] == [1]
    finally:
        await store.close()


# ---------------------------------------------------------------------------- failing disk


async def disk_full(store: SQLiteStore, full: bool) -> None:
    """Cap the database at its current size (SQLite then fails writes that need a new page
    with SQLITE_FULL, as on a full disk), or lift the cap."""

    def op(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages if full else 2**30}")

    await store._write(op)


async def hold_writer(store: SQLiteStore, seconds: float) -> asyncio.Future[None]:
    """Keep the writer busy, so that the jobs queued meanwhile share its next cycle. Returns
    once the writer is inside the hold (a job queued after that cannot share its cycle)."""
    started = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        time.sleep(seconds)

    held = store._submit(hold)
    await asyncio.to_thread(started.wait, 5)
    return held


async def test_a_failing_transaction_answers_every_job_in_it(tmp_path: Path) -> None:
    """SQLITE_FULL in the middle of a cycle: every SEND, ACK and command queued with it gets
    StoreUnavailable (never silence, never a false OK), and the store recovers."""
    store = await staging(tmp_path / "relay.db", 0.05)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        first = mid()
        await store.put_message(rec.sender_id, first, b"x", NOW, LIMITS)
        await disk_full(store, True)
        held = await hold_writer(store, 0.3)
        big = QueueRecord(os.urandom(16), os.urandom(16), os.urandom(200_000))
        new = asyncio.ensure_future(store.create_queue(big, NOW))  # needs pages: fails
        await asyncio.sleep(0)
        send = store.put_message(rec.sender_id, mid(), b"after", NOW, LIMITS)
        ack = store.ack(rec.recipient_id, first)
        await held
        for fut in (new, send, ack):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(fut, 5)
        # A staged message whose own insert fails is answered too.
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(
                store.put_message(rec.sender_id, mid(), os.urandom(100_000), NOW, BIG), 5
            )
        await disk_full(store, False)
        assert await store.ack(rec.recipient_id, first) is True
        ref = await store.put_message(rec.sender_id, mid(), b"later", NOW, LIMITS)
        # Seqs 2 and 3 went to the two puts whose inserts failed: never handed out twice.
        assert ref.seq == 4
    finally:
        await store.close()


async def test_a_queue_deletion_rolled_back_keeps_the_queues_seqs(tmp_path: Path) -> None:
    """A DEL that fails with its transaction leaves the queue, and the seqs already handed
    out stay handed out: the next message must not reuse one (a subscriber that was pushed
    that seq would skip the new message)."""
    store = await staging(tmp_path / "relay.db", 0.05)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        seqs: list[int] = []
        await store.put_message(rec.sender_id, mid(), b"a1", NOW, LIMITS)
        seqs.append(1)
        await disk_full(store, True)
        staged = store.put_message(
            rec.sender_id, mid(), b"a2", NOW, LIMITS, accepted=lambda r: seqs.append(r.seq)
        )
        held = await hold_writer(store, 0.3)
        await asyncio.sleep(0.05)
        delete = asyncio.ensure_future(store.delete_queue(rec.recipient_id))
        big = QueueRecord(os.urandom(16), os.urandom(16), os.urandom(200_000))
        new = asyncio.ensure_future(store.create_queue(big, NOW))
        await held
        for fut in (delete, new):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(fut, 5)
        with contextlib.suppress(StoreUnavailable):
            await asyncio.wait_for(staged, 5)
        assert seqs == [1, 2]  # seq 2 was handed out (and pushed) before the failure
        await disk_full(store, False)
        assert await store.queue_by_recipient(rec.recipient_id) is not None
        ref = await store.put_message(rec.sender_id, mid(), b"a3", NOW, LIMITS)
        assert ref.seq == 3
    finally:
        await store.close()


async def test_a_put_sqlite_cannot_store_fails_alone(tmp_path: Path) -> None:
    """A value SQLite cannot bind fails that put only; the writer lives on."""
    store = await staging(tmp_path / "relay.db", 0.02)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        with pytest.raises(OverflowError):
            await asyncio.wait_for(store.put_message(rec.sender_id, mid(), b"x", 2**70, LIMITS), 5)
        assert (await store.put_message(rec.sender_id, mid(), b"y", NOW, LIMITS)).seq == 2
    finally:
        await store.close()


async def test_the_store_wide_cap_counts_staged_messages_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    store = await staging(db, 1.0)
    a, b = new_record(), new_record()
    await store.create_queue(a, NOW)
    await store.create_queue(b, NOW)
    cap = Limits(max_store_bytes=20)
    puts = [
        store.put_message(r.sender_id, mid(), b"x" * 10, NOW, cap, accepted=delivered())
        for r in (a, b)
    ]
    await asyncio.sleep(0.1)  # both leases granted, both puts staged
    assert not any(p.done() for p in puts)
    with pytest.raises(QuotaExceeded):  # the first two are only staged, and already count
        await asyncio.wait_for(store.put_message(a.sender_id, mid(), b"y", NOW, cap), 0.5)
    await store.close()
    await asyncio.gather(*puts)
    store = await opened(db)
    try:
        with pytest.raises(QuotaExceeded):
            await store.put_message(b.sender_id, mid(), b"y", NOW, cap)
    finally:
        await store.close()


async def test_on_a_full_disk_every_due_staged_message_fails_at_once(tmp_path: Path) -> None:
    """Not one per retry: with the writer backing off up to a second between attempts, a
    hundred staged messages would otherwise keep their senders waiting for minutes."""
    store = await staging(tmp_path / "relay.db", 0.05)
    try:
        rec = new_record()
        await store.create_queue(rec, NOW)
        await disk_full(store, True)
        puts = [
            store.put_message(rec.sender_id, mid(), os.urandom(8192), NOW, BIG)
            for _ in range(100)
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*puts, return_exceptions=True), 5
        )
        assert all(isinstance(r, StoreUnavailable) for r in results)
        await disk_full(store, False)
        assert (await store.put_message(rec.sender_id, mid(), b"x", NOW, BIG)).seq == 101
    finally:
        await store.close()
