"""The typed store inside an unlocked vault: key/value records, Olm/Megolm pickles, metadata.

Everything here lives inside SQLCipher (see :mod:`kith.crypto.sqlstore` for how the database is
opened and hardened), so nothing the client stores reaches the disk in the clear. The API is
deliberately small and typed: the client service stores bytes under text keys, and stores
vodozemac pickles (already encrypted by vodozemac under the vault's pickle key) under a kind
and a name. It never sees SQL.

The schema is versioned: ``schema_version`` holds one row, and :data:`MIGRATIONS` lists the
statements that take a database from version ``i`` to ``i + 1``. Each step runs in one
transaction, so a crash mid-upgrade leaves the previous version intact. A database from a newer
kith (a version above the last known step) is refused, never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Final

from kith.crypto.sqlstore import EncryptedDatabase
from kith.vault.errors import InvalidRecord, VaultCorrupt

#: MIGRATIONS[i] takes the schema from version i to version i + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (0)",
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE pickles ("
        " kind TEXT NOT NULL, name TEXT NOT NULL, pickle BLOB NOT NULL,"
        " PRIMARY KEY (kind, name)) WITHOUT ROWID",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

MAX_KEY_LEN: Final = 512
MAX_KIND_LEN: Final = 64
MAX_VALUE_LEN: Final = 64 * 1024 * 1024

META_KEYFILE_DIGEST: Final = "keyfile_digest"
META_KEYFILE_PENDING: Final = "keyfile_digest_pending"


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} must be str")
    if not value or len(value) > limit:
        raise InvalidRecord(f"{what} must be 1 to {limit} characters")
    if "\x00" in value:
        raise InvalidRecord(f"{what} must not contain NUL")
    return value


def _blob(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidRecord("value must be bytes")
    if len(value) > MAX_VALUE_LEN:
        raise InvalidRecord("value too large")
    return value


def schema_version(db: EncryptedDatabase) -> int:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", ("schema_version",)
    )
    if not rows:
        return 0
    version = db.execute("SELECT version FROM schema_version")
    if len(version) != 1 or not isinstance(version[0][0], int):
        raise VaultCorrupt("schema_version table is damaged")
    return version[0][0]


def migrate(db: EncryptedDatabase) -> None:
    """Bring ``db`` to :data:`SCHEMA_VERSION`, one transaction per step."""
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise VaultCorrupt("this vault was written by a newer version of kith")
    for step in range(current, SCHEMA_VERSION):
        with db.transaction():
            for statement in MIGRATIONS[step]:
                db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (step + 1,))


class VaultDB:
    """Typed access to one profile's database. Obtain it from ``UnlockedVault.db``."""

    __slots__ = ("_db",)

    def __init__(self, db: EncryptedDatabase) -> None:
        self._db = db

    # ---------------------------------------------------------------- transactions
    def transaction(self) -> AbstractContextManager[None]:
        """Make several writes one atomic, durable commit::

        with vault.db.transaction():
            vault.db.put("a", b"1")
            vault.db.put_pickle("session", sid, pickle)
        """
        return self._db.transaction()

    # ---------------------------------------------------------------- key/value
    def get(self, key: str) -> bytes | None:
        rows = self._db.execute(
            "SELECT value FROM kv WHERE key = ?", (_text(key, "key", MAX_KEY_LEN),)
        )
        return _as_bytes(rows[0][0]) if rows else None

    def put(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_text(key, "key", MAX_KEY_LEN), _blob(value)),
        )

    def delete(self, key: str) -> bool:
        """Delete a record (its pages are overwritten: secure_delete). True if it existed."""
        k = _text(key, "key", MAX_KEY_LEN)
        with self._db.transaction():
            existed = bool(self._db.execute("SELECT 1 FROM kv WHERE key = ?", (k,)))
            self._db.execute("DELETE FROM kv WHERE key = ?", (k,))
        return existed

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        if not isinstance(prefix, str):
            raise InvalidRecord("prefix must be str")
        rows = self._db.execute(
            "SELECT key FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)
        )
        return [str(r[0]) for r in rows]

    def items(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """(key, value) pairs whose key starts with ``prefix``, sorted by key."""
        if not isinstance(prefix, str):
            raise InvalidRecord("prefix must be str")
        rows = self._db.execute(
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return ((str(k), _as_bytes(v)) for k, v in rows)

    # ---------------------------------------------------------------- pickles
    def put_pickle(self, kind: str, name: str, pickle: bytes) -> None:
        """Store a vodozemac pickle (already encrypted under ``UnlockedVault.pickle_key``).

        ``kind`` groups pickles (``"account"``, ``"session"``, ``"inbound_group"``...),
        ``name`` identifies one within its kind. Pickles never exist outside SQLCipher.
        """
        _blob(pickle)
        self._db.execute(
            "INSERT INTO pickles (kind, name, pickle) VALUES (?, ?, ?)"
            " ON CONFLICT (kind, name) DO UPDATE SET pickle = excluded.pickle",
            (_text(kind, "kind", MAX_KIND_LEN), _text(name, "name", MAX_KEY_LEN), pickle),
        )

    def get_pickle(self, kind: str, name: str) -> bytes | None:
        rows = self._db.execute(
            "SELECT pickle FROM pickles WHERE kind = ? AND name = ?",
            (_text(kind, "kind", MAX_KIND_LEN), _text(name, "name", MAX_KEY_LEN)),
        )
        return _as_bytes(rows[0][0]) if rows else None

    def delete_pickle(self, kind: str, name: str) -> bool:
        k, n = _text(kind, "kind", MAX_KIND_LEN), _text(name, "name", MAX_KEY_LEN)
        with self._db.transaction():
            existed = bool(
                self._db.execute("SELECT 1 FROM pickles WHERE kind = ? AND name = ?", (k, n))
            )
            self._db.execute("DELETE FROM pickles WHERE kind = ? AND name = ?", (k, n))
        return existed

    def pickle_names(self, kind: str) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM pickles WHERE kind = ? ORDER BY name",
            (_text(kind, "kind", MAX_KIND_LEN),),
        )
        return [str(r[0]) for r in rows]

    # ---------------------------------------------------------------- vault metadata
    def meta_get(self, name: str) -> bytes | None:
        rows = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,))
        return _as_bytes(rows[0][0]) if rows else None

    def meta_put(self, name: str, value: bytes | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE name = ?", (name,))
        else:
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    @property
    def raw(self) -> EncryptedDatabase:
        """The underlying connection, for the vault itself and its tests."""
        return self._db


def _as_bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise VaultCorrupt("a stored value has the wrong type")
    return value
