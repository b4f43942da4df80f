"""Opening SQLCipher: raw key, hardening pragmas, wrong keys, silence on stderr."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from kith.crypto.sqlstore import SqlStoreError, open_encrypted
from kith.errors import DecryptError

KEY = bytes(range(32))
OTHER = bytes(32)
MARKER = b"PLAINTEXT-MARKER-7f3a"


def _make(path: pathlib.Path) -> None:
    db = open_encrypted(path, KEY, create=True)
    try:
        db.execute("CREATE TABLE t (v BLOB)")
        db.execute("INSERT INTO t VALUES (?)", (MARKER * 50,))
    finally:
        db.close()


def test_created_file_is_private_and_encrypted(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.db"
    _make(path)
    assert path.stat().st_mode & 0o777 == 0o600
    raw = path.read_bytes()
    assert MARKER not in raw
    assert not raw.startswith(b"SQLite format 3")  # no plaintext header either
    db = open_encrypted(path, KEY, create=False)
    try:
        assert db.execute("SELECT v FROM t") == [(MARKER * 50,)]
    finally:
        db.close()


def test_hardening_pragmas_are_in_force(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.db"
    _make(path)
    db = open_encrypted(path, KEY, create=False)
    try:
        assert db.execute("PRAGMA cipher_memory_security") == [("1",)]
        assert db.execute("PRAGMA journal_mode") == [("delete",)]
        assert db.execute("PRAGMA secure_delete") == [(1,)]
        assert db.execute("PRAGMA temp_store") == [(2,)]
        assert db.execute("PRAGMA synchronous") == [(2,)]
        assert db.execute("PRAGMA cipher_log_level") == [("NONE",)]
        assert db.execute("PRAGMA cipher_plaintext_header_size") == [("0",)]
    finally:
        db.close()


def test_wrong_key_is_opaque_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.db"
    _make(path)
    before = path.read_bytes()
    with pytest.raises(DecryptError):
        open_encrypted(path, OTHER, create=False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_empty_or_foreign_files_do_not_authenticate(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(DecryptError):
        open_encrypted(empty, KEY, create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(DecryptError):
        open_encrypted(junk, KEY, create=False)


def test_open_never_creates_and_create_never_overwrites(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SqlStoreError):
        open_encrypted(tmp_path / "missing.db", KEY, create=False)
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "x.db"
    _make(path)
    before = path.read_bytes()
    with pytest.raises(SqlStoreError):
        open_encrypted(path, KEY, create=True)
    assert path.read_bytes() == before


def test_transaction_rolls_back_on_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.db"
    _make(path)
    db = open_encrypted(path, KEY, create=False)
    try:
        with pytest.raises(RuntimeError), db.transaction():
            db.execute("INSERT INTO t VALUES (?)", (b"a",))
            with db.transaction():  # nested joins the outer one
                db.execute("INSERT INTO t VALUES (?)", (b"b",))
            raise RuntimeError
        assert db.execute("SELECT count(*) FROM t") == [(1,)]
        with db.transaction():
            db.executemany("INSERT INTO t VALUES (?)", [(b"c",), (b"d",)])
        assert db.execute("SELECT count(*) FROM t") == [(3,)]
    finally:
        db.close()


def test_driver_errors_become_store_errors_and_close_is_final(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.db"
    _make(path)
    db = open_encrypted(path, KEY, create=False)
    with pytest.raises(SqlStoreError):
        db.execute("SELECT * FROM no_such_table")
    db.close()
    db.close()
    with pytest.raises(SqlStoreError):
        db.execute("SELECT 1")


def test_key_size_and_type_are_checked(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        open_encrypted(tmp_path / "x.db", bytes(16), create=True)
    with pytest.raises(TypeError):
        open_encrypted(tmp_path / "x.db", "k" * 32, create=True)  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()


_CHILD = textwrap.dedent(
    """
    import sys
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "kith":
        from kith.crypto.sqlstore import open_encrypted
        from kith.errors import DecryptError
        try:
            open_encrypted(path, bytes(32), create=False)
        except DecryptError:
            pass
    else:  # what SQLCipher does when nobody turns its logging off
        import sqlcipher3
        conn = sqlcipher3.connect(path)
        conn.execute("PRAGMA key = \\"x'" + "00" * 32 + "'\\"")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlcipher3.DatabaseError:
            pass
    """
)


def test_a_wrong_key_leaves_no_trace_on_stderr(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.db"
    _make(path)
    ours = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "kith"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stderr == b""
    # Control: the same attempt without kith's settings does write to stderr, so the
    # assertion above is able to fail.
    bare = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "bare"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"hmac check failed" in bare.stderr
