"""Open SQLCipher databases with a raw 256-bit key, hardened, or refuse to open them at all.

This is the only module that talks to ``sqlcipher3``. It gives the vault a small typed
connection (:class:`EncryptedDatabase`) and translates every driver exception into kith's
own: a wrong key (or a file that is not ours) raises the opaque
:class:`~kith.errors.DecryptError`; anything else raises :class:`SqlStoreError`.

What it sets, and why (checked on every open; the open fails closed if SQLCipher refuses):

- **Raw key.** The key is handed to ``sqlite3_key`` in SQLCipher's raw-key form
  (``x'<64 hex digits>'``), so SQLCipher skips its own PBKDF2: the passphrase work is done
  once, by Argon2id, in the vault's key slots. It is passed through the driver's ``set_key``
  (the same C call ``PRAGMA key`` makes) so that the key never becomes part of an SQL string
  that could end up in a statement cache or a trace callback.
- **cipher_memory_security = ON.** SQLCipher then locks and wipes the memory it allocates.
  It is process-wide and cannot be turned off again once on; that is what we want.
- **Logging off** (``cipher_log = off``, ``cipher_log_level = NONE``). SQLCipher 4.6+ logs
  to stderr by default and, with a wrong key, writes "hmac check failed for pgno=1": a
  line that tells anyone reading the terminal or a crash log that a wrong key was tried.
- **journal_mode = DELETE.** The rollback journal holds encrypted pages and is unlinked after
  each commit, so a closed vault is one file per database with nothing beside it. WAL
  would leave ``-wal`` and ``-shm`` files whose sizes record how much was written recently.
- **secure_delete = ON** so freed pages are overwritten (inside the encryption) rather than
  keeping old rows readable to anyone who later holds the key.
- **temp_store = MEMORY** so sorts and temporary tables never reach an (unencrypted) temp
  file.
- **synchronous = FULL** so a commit that returned survives a power cut.
- It also checks ``cipher_version``: a driver linked against plain SQLite would accept the key
  and silently write plaintext. We refuse to run rather than risk that.

The connection may be used from any thread, one call at a time (an internal lock serialises
calls); the vault's callers run it on a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import sqlcipher3

from kith.errors import DecryptError, StoreError

KEY_LEN: Final = 32

#: A value SQLite can store or return.
SqlValue = None | int | float | str | bytes
Row = tuple[SqlValue, ...]

_SQLITE_NOTADB: Final = 26


class SqlStoreError(StoreError):
    """The encrypted database failed: I/O error, corruption, constraint, or unsafe build."""


def _raw_key_literal(key: bytes | bytearray) -> bytes:
    return b"x'" + bytes(key).hex().encode("ascii") + b"'"


class EncryptedDatabase:
    """One open SQLCipher connection in autocommit mode; see :func:`open_encrypted`."""

    __slots__ = ("_conn", "_depth", "_lock", "_path")

    def __init__(self, conn: Any, path: pathlib.Path) -> None:
        self._conn: Any = conn
        self._path = path
        self._lock = threading.RLock()
        self._depth = 0

    @property
    def path(self) -> pathlib.Path:
        return self._path

    @property
    def closed(self) -> bool:
        return self._conn is None

    def _live(self) -> Any:
        if self._conn is None:
            raise SqlStoreError("database is closed")
        return self._conn

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        """Run one statement and return all result rows."""
        with self._lock:
            conn = self._live()
            try:
                return [tuple(row) for row in conn.execute(sql, tuple(params)).fetchall()]
            except sqlcipher3.Error as exc:
                raise SqlStoreError(str(exc)) from None

    def executemany(self, sql: str, rows: Iterable[Sequence[SqlValue]]) -> None:
        """Run one statement once per parameter row."""
        with self._lock:
            conn = self._live()
            try:
                conn.executemany(sql, (tuple(r) for r in rows))
            except sqlcipher3.Error as exc:
                raise SqlStoreError(str(exc)) from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group statements into one atomic, durable commit; roll back on any exception.

        Nested use joins the outer transaction. ``BEGIN IMMEDIATE`` takes the write lock at
        the start, so a transaction never fails half-way for lack of it.
        """
        with self._lock:
            conn = self._live()
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlcipher3.Error as exc:
                raise SqlStoreError(str(exc)) from None
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                # The original exception matters more than a failed rollback.
                with contextlib.suppress(sqlcipher3.Error):
                    conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except sqlcipher3.Error as exc:
                with contextlib.suppress(sqlcipher3.Error):
                    conn.execute("ROLLBACK")
                raise SqlStoreError(str(exc)) from None

    def close(self) -> None:
        """Close the connection (SQLCipher wipes its key material). Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlcipher3.Error as exc:
                    raise SqlStoreError(str(exc)) from None

    def __repr__(self) -> str:
        return f"EncryptedDatabase({self._path.name!r}, closed={self.closed})"


def _harden(conn: Any) -> None:
    """Settings that must hold before the key is set (they are process-wide in SQLCipher)."""
    version = conn.execute("PRAGMA cipher_version").fetchall()
    if not version or not version[0][0]:
        raise SqlStoreError("the SQLite library is not SQLCipher; refusing to store anything")
    conn.execute("PRAGMA cipher_log = off").fetchall()
    conn.execute("PRAGMA cipher_log_level = NONE").fetchall()
    conn.execute("PRAGMA cipher_memory_security = ON").fetchall()


def _expect(conn: Any, pragma: str, expected: object) -> None:
    rows = conn.execute(f"PRAGMA {pragma}").fetchall()
    got = rows[0][0] if rows else None
    if str(got).lower() != str(expected).lower():
        raise SqlStoreError(f"SQLCipher refused PRAGMA {pragma} (got {got!r})")


def _configure(conn: Any) -> None:
    conn.execute("PRAGMA journal_mode = DELETE").fetchall()
    conn.execute("PRAGMA secure_delete = ON").fetchall()
    conn.execute("PRAGMA temp_store = MEMORY").fetchall()
    conn.execute("PRAGMA synchronous = FULL").fetchall()
    conn.execute("PRAGMA foreign_keys = ON").fetchall()
    _expect(conn, "journal_mode", "delete")
    _expect(conn, "secure_delete", 1)
    _expect(conn, "temp_store", 2)
    _expect(conn, "synchronous", 2)
    _expect(conn, "cipher_memory_security", 1)


def open_encrypted(
    path: str | os.PathLike[str], key: bytes | bytearray, *, create: bool
) -> EncryptedDatabase:
    """Open (or, with ``create=True``, create) the SQLCipher database at ``path``.

    ``create=True`` requires that no file exists yet and creates it with mode 0600 before
    SQLite touches it (SQLite would use 0644; its journal copies the database file's mode).
    ``create=False`` never creates a file. A wrong key, or a file that is not a SQLCipher
    database under this key (including an empty file), raises :class:`DecryptError`.
    """
    if not isinstance(key, bytes | bytearray):
        raise TypeError("key must be bytes")
    if len(key) != KEY_LEN:
        raise ValueError("key must be 32 bytes")
    p = pathlib.Path(path)
    if create:
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SqlStoreError(f"cannot create database file: {exc.strerror}") from None
        os.close(fd)
    elif not p.is_file():
        raise SqlStoreError("database file is missing")
    # mode=rw: SQLite must never create a file itself (it would do so with mode 0644).
    uri = "file:" + urllib.parse.quote(str(p.resolve())) + "?mode=rw"
    try:
        conn = sqlcipher3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlcipher3.Error as exc:
        raise SqlStoreError(str(exc)) from None
    try:
        _harden(conn)
        conn.set_key(_raw_key_literal(key))
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlcipher3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) == _SQLITE_NOTADB:
                raise DecryptError from None
            raise
        if not create and conn.execute("PRAGMA page_count").fetchall()[0][0] == 0:
            raise DecryptError
        _configure(conn)
    except (DecryptError, SqlStoreError):
        conn.close()
        raise
    except sqlcipher3.Error as exc:
        conn.close()
        raise SqlStoreError(str(exc)) from None
    return EncryptedDatabase(conn, p)
