"""The client's tables inside the vault's SQLCipher database.

Why tables of its own rather than the vault's key/value records: the client needs ordered,
indexed, transactional data (messages in arrival order, an outbox per relay, expiry by time,
dedupe by message id) and must change several of them in one commit (a received message, the
channel state that decrypted it and its delivery receipt). Everything stays inside the same
encrypted database, so nothing here ever reaches the disk in the clear, and deleted rows are
overwritten (the vault opens the database with ``secure_delete``).

The schema is versioned on its own (``client_schema``), like the vault's: :data:`MIGRATIONS`
lists the statements from version ``i`` to ``i + 1``; each step is one transaction; a database
from a newer kith is refused rather than guessed at.

This module is synchronous and does no I/O besides the database: the service calls it from
one worker thread (so SQLCipher's fsyncs never block the event loop) and composes its methods
inside :meth:`ClientStore.transaction` where several must commit together. What is sealed
(channels, pending invitations) is sealed by the protocol layer before it gets here; the store
holds those blobs and knows nothing of their contents.

Tables (all inside SQLCipher):

- ``client_settings``: the profile's relay, default disappearing timer.
- ``contacts``: alias (unique), local random id, state, sealed channel, verification state,
  disappearing timer.
- ``queues``: every relay queue this profile receives on (invitation inboxes, contact inboxes,
  retired inboxes still draining, and deleted contacts' inboxes until the relay confirms the
  deletion), with the seed of its recipient key and any sender key it must be secured with.
- ``invitations``: sealed pending invitations, kept until expiry even after use.
- ``messages``: text in and out, with state and expiry; unique per (contact, direction,
  message id), which is what makes delivery exactly-once as a person sees it.
- ``outbox``: the exact blocks still to send, in order, with the queue they go to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from kith.client.model import (
    ContactInfo,
    ContactState,
    MessageInfo,
    MessageState,
    Verification,
    from_ms,
)
from kith.crypto.sqlstore import EncryptedDatabase, SqlValue
from kith.errors import StoreError

#: MIGRATIONS[i] takes the client schema from version i to i + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE client_schema (version INTEGER NOT NULL)",
        "INSERT INTO client_schema (version) VALUES (0)",
        "CREATE TABLE client_settings (name TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
        "CREATE TABLE contacts ("
        " id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL UNIQUE,"
        " state TEXT NOT NULL,"
        " invitation_id BLOB NOT NULL UNIQUE,"
        " channel BLOB NOT NULL,"
        " verification BLOB NOT NULL,"
        " disappear_s INTEGER,"
        " created_ms INTEGER NOT NULL)",
        "CREATE TABLE queues ("
        " relay TEXT NOT NULL,"
        " recipient_id BLOB NOT NULL,"
        " auth_seed BLOB NOT NULL,"
        " kind INTEGER NOT NULL,"
        " owner TEXT NOT NULL,"
        " secure_key BLOB,"
        " secured INTEGER NOT NULL DEFAULT 0,"
        " retire_ms INTEGER,"
        " PRIMARY KEY (relay, recipient_id)) WITHOUT ROWID",
        "CREATE TABLE invitations ("
        " id BLOB PRIMARY KEY,"
        " state BLOB NOT NULL,"
        " expires_ms INTEGER NOT NULL,"
        " contact_id TEXT) WITHOUT ROWID",
        "CREATE TABLE messages ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,"
        " outgoing INTEGER NOT NULL,"
        " msg_id BLOB NOT NULL,"
        " seq INTEGER,"
        " state TEXT NOT NULL,"
        " flags INTEGER NOT NULL,"
        " body TEXT NOT NULL,"
        " sent_ms INTEGER NOT NULL,"
        " stored_ms INTEGER NOT NULL,"
        " expires_ms INTEGER,"
        " UNIQUE (contact_id, outgoing, msg_id))",
        "CREATE INDEX messages_expiry ON messages (expires_ms) WHERE expires_ms IS NOT NULL",
        "CREATE INDEX messages_unread ON messages (contact_id, state)",
        "CREATE TABLE outbox ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,"
        " relay TEXT NOT NULL,"
        " sender_id BLOB NOT NULL,"
        " auth_seed BLOB NOT NULL,"
        " block BLOB NOT NULL,"
        " kind INTEGER NOT NULL,"
        " message_id INTEGER REFERENCES messages (id) ON DELETE SET NULL)",
        "CREATE INDEX outbox_relay ON outbox (relay, id)",
    ),
    # 2: incoming sequence numbers are stored (to mark messages that arrive late); the index
    # keeps the "late" check of a message listing from scanning the whole conversation.
    ("CREATE INDEX messages_by_seq ON messages (contact_id, outgoing, seq)",),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

SETTING_RELAY: Final = "relay_url"
SETTING_DEFAULT_DISAPPEAR: Final = "default_disappear_s"


class ClientStoreCorrupt(StoreError):
    """The client's tables are damaged or from a newer kith."""


class QueueKind(enum.IntEnum):
    INVITATION = 0  #: an invitation's inbox, owner = invitation id (hex)
    CONTACT = 1  #: a contact's current inbox, owner = contact id
    RETIRING = 2  #: a contact's previous inbox, drained until ``retire_ms``, then deleted
    #: To be deleted at the relay (forgotten contact, expired invitation); given up on at
    #: ``retire_ms`` if the relay stays unreachable until then.
    DOOMED = 3


class OutboxKind(enum.IntEnum):
    ACCEPT = 0  #: our acceptance of an invitation (refused for good = invitation used)
    CONFIRM = 1  #: the inviter's confirmation
    MESSAGE = 2  #: a text message (``message_id`` names it)
    CONTROL = 3  #: receipts, resend requests, queue moves


@dataclass(frozen=True, slots=True)
class ContactRow:
    id: str
    name: str
    state: ContactState
    invitation_id: bytes
    channel: bytes
    verification: bytes
    disappear_s: int | None
    created_ms: int
    unread: int = 0

    def info(self, verification: Verification) -> ContactInfo:
        return ContactInfo(
            id=self.id,
            name=self.name,
            state=self.state,
            verification=verification,
            disappearing_seconds=self.disappear_s,
            unread=self.unread,
            created_at=from_ms(self.created_ms),
        )


@dataclass(frozen=True, slots=True)
class QueueRow:
    relay: str
    recipient_id: bytes
    auth_seed: bytes
    kind: QueueKind
    owner: str
    secure_key: bytes | None = None
    secured: bool = False
    retire_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    contact_id: str
    relay: str
    sender_id: bytes
    auth_seed: bytes
    block: bytes
    kind: OutboxKind
    message_id: int | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    contact_id: str
    outgoing: bool
    msg_id: bytes
    seq: int | None
    state: MessageState
    flags: int
    body: str
    sent_ms: int
    stored_ms: int
    expires_ms: int | None


@dataclass(frozen=True, slots=True)
class NewOutbox:
    contact_id: str
    relay: str
    sender_id: bytes
    auth_seed: bytes
    block: bytes
    kind: OutboxKind


_CONTACT_COLUMNS: Final = (
    "c.id, c.name, c.state, c.invitation_id, c.channel, c.verification, c.disappear_s,"
    " c.created_ms,"
    " (SELECT count(*) FROM messages m WHERE m.contact_id = c.id AND m.state = 'unread')"
)
_MESSAGE_COLUMNS: Final = (
    "id, contact_id, outgoing, state, flags, body, sent_ms, stored_ms, expires_ms,"
    # late: an incoming message the sender wrote before one that was stored earlier here
    # (a relay held it back, or it was lost and sent again).
    " EXISTS (SELECT 1 FROM messages AS e WHERE messages.outgoing = 0 AND e.outgoing = 0"
    " AND e.contact_id = messages.contact_id AND e.seq > messages.seq AND e.id < messages.id)"
)
_QUEUE_COLUMNS: Final = (
    "relay, recipient_id, auth_seed, kind, owner, secure_key, secured, retire_ms"
)
_OUTBOX_COLUMNS: Final = "id, contact_id, relay, sender_id, auth_seed, block, kind, message_id"


def _int(value: SqlValue) -> int:
    if not isinstance(value, int):
        raise ClientStoreCorrupt("a stored number has the wrong type")
    return value


def _opt_int(value: SqlValue) -> int | None:
    return None if value is None else _int(value)


def _bytes(value: SqlValue) -> bytes:
    if not isinstance(value, bytes):
        raise ClientStoreCorrupt("a stored value has the wrong type")
    return value


def _opt_bytes(value: SqlValue) -> bytes | None:
    return None if value is None else _bytes(value)


def _str(value: SqlValue) -> str:
    if not isinstance(value, str):
        raise ClientStoreCorrupt("a stored text has the wrong type")
    return value


def _contact(row: Sequence[SqlValue]) -> ContactRow:
    try:
        state = ContactState(_str(row[2]))
    except ValueError:
        raise ClientStoreCorrupt("unknown contact state") from None
    return ContactRow(
        id=_str(row[0]),
        name=_str(row[1]),
        state=state,
        invitation_id=_bytes(row[3]),
        channel=_bytes(row[4]),
        verification=_bytes(row[5]),
        disappear_s=_opt_int(row[6]),
        created_ms=_int(row[7]),
        unread=_int(row[8]),
    )


def _message(row: Sequence[SqlValue]) -> MessageInfo:
    try:
        state = MessageState(_str(row[3]))
    except ValueError:
        raise ClientStoreCorrupt("unknown message state") from None
    expires = _opt_int(row[8])
    return MessageInfo(
        id=_int(row[0]),
        contact_id=_str(row[1]),
        outgoing=bool(_int(row[2])),
        text=_str(row[5]),
        state=state,
        sent_at=from_ms(_int(row[6])),
        stored_at=from_ms(_int(row[7])),
        expires_at=None if expires is None else from_ms(expires),
        flags=_int(row[4]),
        late=bool(_int(row[9])),
    )


def _queue(row: Sequence[SqlValue]) -> QueueRow:
    try:
        kind = QueueKind(_int(row[3]))
    except ValueError:
        raise ClientStoreCorrupt("unknown queue kind") from None
    return QueueRow(
        relay=_str(row[0]),
        recipient_id=_bytes(row[1]),
        auth_seed=_bytes(row[2]),
        kind=kind,
        owner=_str(row[4]),
        secure_key=_opt_bytes(row[5]),
        secured=bool(_int(row[6])),
        retire_ms=_opt_int(row[7]),
    )


def _outbox(row: Sequence[SqlValue]) -> OutboxRow:
    try:
        kind = OutboxKind(_int(row[6]))
    except ValueError:
        raise ClientStoreCorrupt("unknown outbox kind") from None
    return OutboxRow(
        id=_int(row[0]),
        contact_id=_str(row[1]),
        relay=_str(row[2]),
        sender_id=_bytes(row[3]),
        auth_seed=_bytes(row[4]),
        block=_bytes(row[5]),
        kind=kind,
        message_id=_opt_int(row[7]),
    )


def schema_version(db: EncryptedDatabase) -> int:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'client_schema'"
    )
    if not rows:
        return 0
    version = db.execute("SELECT version FROM client_schema")
    if len(version) != 1 or not isinstance(version[0][0], int):
        raise ClientStoreCorrupt("client_schema table is damaged")
    return version[0][0]


def migrate(db: EncryptedDatabase) -> None:
    """Bring the client tables to :data:`SCHEMA_VERSION`, one transaction per step."""
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise ClientStoreCorrupt("this profile was written by a newer version of kith")
    for step in range(current, SCHEMA_VERSION):
        with db.transaction():
            for statement in MIGRATIONS[step]:
                db.execute(statement)
            db.execute("UPDATE client_schema SET version = ?", (step + 1,))


class ClientStore:
    """Typed access to the client tables. Not thread-safe by itself: one worker thread owns it
    (the underlying connection serialises calls anyway)."""

    __slots__ = ("_db",)

    def __init__(self, db: EncryptedDatabase) -> None:
        self._db = db
        migrate(db)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several calls, one atomic and durable commit (nested calls join it)."""
        with self._db.transaction():
            yield

    def _x(self, sql: str, params: Sequence[SqlValue] = ()) -> list[tuple[SqlValue, ...]]:
        return self._db.execute(sql, params)

    # ------------------------------------------------------------------ settings

    def setting(self, name: str) -> SqlValue:
        rows = self._x("SELECT value FROM client_settings WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def has_setting(self, name: str) -> bool:
        return bool(self._x("SELECT 1 FROM client_settings WHERE name = ?", (name,)))

    def put_setting(self, name: str, value: SqlValue) -> None:
        self._x(
            "INSERT INTO client_settings (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # ------------------------------------------------------------------ contacts

    def contacts(self) -> list[ContactRow]:
        rows = self._x(f"SELECT {_CONTACT_COLUMNS} FROM contacts c ORDER BY c.name")  # noqa: S608 (constant column list)
        return [_contact(r) for r in rows]

    def contact(self, contact_id: str) -> ContactRow | None:
        rows = self._x(f"SELECT {_CONTACT_COLUMNS} FROM contacts c WHERE c.id = ?", (contact_id,))  # noqa: S608 (constant column list)
        return _contact(rows[0]) if rows else None

    def contact_by_name(self, name: str) -> ContactRow | None:
        rows = self._x(f"SELECT {_CONTACT_COLUMNS} FROM contacts c WHERE c.name = ?", (name,))  # noqa: S608 (constant column list)
        return _contact(rows[0]) if rows else None

    def contact_by_invitation(self, invitation_id: bytes) -> ContactRow | None:
        rows = self._x(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts c WHERE c.invitation_id = ?",  # noqa: S608 (constant column list)
            (invitation_id,),
        )
        return _contact(rows[0]) if rows else None

    def name_taken(self, name: str) -> bool:
        return bool(self._x("SELECT 1 FROM contacts WHERE name = ?", (name,)))

    def insert_contact(self, row: ContactRow) -> None:
        self._x(
            "INSERT INTO contacts (id, name, state, invitation_id, channel, verification,"
            " disappear_s, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.name,
                row.state.value,
                row.invitation_id,
                row.channel,
                row.verification,
                row.disappear_s,
                row.created_ms,
            ),
        )

    def save_channel(self, contact_id: str, channel: bytes) -> None:
        self._changed(
            "UPDATE contacts SET channel = ? WHERE id = ?", (channel, contact_id), contact_id
        )

    def save_verification(self, contact_id: str, verification: bytes) -> None:
        self._changed(
            "UPDATE contacts SET verification = ? WHERE id = ?",
            (verification, contact_id),
            contact_id,
        )

    def set_contact_state(self, contact_id: str, state: ContactState) -> None:
        self._changed(
            "UPDATE contacts SET state = ? WHERE id = ?", (state.value, contact_id), contact_id
        )

    def rename_contact(self, contact_id: str, name: str) -> None:
        self._changed("UPDATE contacts SET name = ? WHERE id = ?", (name, contact_id), contact_id)

    def set_disappear(self, contact_id: str, seconds: int | None) -> None:
        self._changed(
            "UPDATE contacts SET disappear_s = ? WHERE id = ?", (seconds, contact_id), contact_id
        )

    def shorten_expiry(self, contact_id: str, seconds: int) -> None:
        """Messages with this contact expire no later than ``seconds`` after they were stored."""
        self._x(
            "UPDATE messages SET expires_ms = stored_ms + ?"
            " WHERE contact_id = ? AND (expires_ms IS NULL OR expires_ms > stored_ms + ?)",
            (seconds * 1000, contact_id, seconds * 1000),
        )

    def delete_contact(self, contact_id: str, give_up_ms: int) -> None:
        """Delete the contact, its messages, outbox (cascade) and used invitation; its queues
        become DOOMED so they are deleted at the relay too."""
        with self.transaction():
            self._x(
                "UPDATE queues SET kind = ?, owner = '', retire_ms = ?"
                " WHERE owner = ? AND kind IN (?, ?)",
                (
                    int(QueueKind.DOOMED),
                    give_up_ms,
                    contact_id,
                    int(QueueKind.CONTACT),
                    int(QueueKind.RETIRING),
                ),
            )
            # The used invitation only served to refuse a second acceptance on the queue,
            # which is being deleted at the relay: keep nothing that relates to the contact.
            self._x("DELETE FROM invitations WHERE contact_id = ?", (contact_id,))
            self._x("DELETE FROM contacts WHERE id = ?", (contact_id,))

    def _changed(self, sql: str, params: Sequence[SqlValue], contact_id: str) -> None:
        self._x(sql, params)
        if not self._x("SELECT changes()")[0][0]:
            raise ClientStoreCorrupt("contact vanished")  # callers hold the contact's lock

    # ------------------------------------------------------------------ queues

    def queues(self, kinds: Sequence[QueueKind] | None = None) -> list[QueueRow]:
        if kinds is None:
            rows = self._x(f"SELECT {_QUEUE_COLUMNS} FROM queues")  # noqa: S608 (constant column list)
        else:
            marks = ", ".join("?" for _ in kinds)
            rows = self._x(
                f"SELECT {_QUEUE_COLUMNS} FROM queues WHERE kind IN ({marks})",  # noqa: S608 (placeholders only)
                tuple(int(k) for k in kinds),
            )
        return [_queue(r) for r in rows]

    def queue(self, relay: str, recipient_id: bytes) -> QueueRow | None:
        rows = self._x(
            f"SELECT {_QUEUE_COLUMNS} FROM queues WHERE relay = ? AND recipient_id = ?",  # noqa: S608 (constant column list)
            (relay, recipient_id),
        )
        return _queue(rows[0]) if rows else None

    def insert_queue(self, q: QueueRow) -> None:
        self._x(
            "INSERT INTO queues (relay, recipient_id, auth_seed, kind, owner, secure_key,"
            " secured, retire_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                q.relay,
                q.recipient_id,
                q.auth_seed,
                int(q.kind),
                q.owner,
                q.secure_key,
                int(q.secured),
                q.retire_ms,
            ),
        )

    def update_queue(self, q: QueueRow) -> None:
        self._x(
            "UPDATE queues SET kind = ?, owner = ?, secure_key = ?, secured = ?, retire_ms = ?"
            " WHERE relay = ? AND recipient_id = ?",
            (
                int(q.kind),
                q.owner,
                q.secure_key,
                int(q.secured),
                q.retire_ms,
                q.relay,
                q.recipient_id,
            ),
        )

    def upsert_queue(self, q: QueueRow) -> None:
        with self.transaction():
            if self.queue(q.relay, q.recipient_id) is None:
                self.insert_queue(q)
            else:
                self.update_queue(q)

    def drop_abandoned(self, now_ms: int) -> int:
        """Forget doomed queues whose relay stayed unreachable until their give-up time (the
        relay expires what they hold; trying forever would slow every sync)."""
        self._x(
            "DELETE FROM queues WHERE kind = ? AND retire_ms IS NOT NULL AND retire_ms <= ?",
            (int(QueueKind.DOOMED), now_ms),
        )
        return _int(self._x("SELECT changes()")[0][0])

    def delete_queue(self, relay: str, recipient_id: bytes) -> None:
        self._x("DELETE FROM queues WHERE relay = ? AND recipient_id = ?", (relay, recipient_id))

    # ------------------------------------------------------------------ invitations

    def insert_invitation(self, invitation_id: bytes, state: bytes, expires_ms: int) -> None:
        self._x(
            "INSERT INTO invitations (id, state, expires_ms) VALUES (?, ?, ?)",
            (invitation_id, state, expires_ms),
        )

    def invitation(self, invitation_id: bytes) -> bytes | None:
        rows = self._x("SELECT state FROM invitations WHERE id = ?", (invitation_id,))
        return _bytes(rows[0][0]) if rows else None

    def invitation_used(self, invitation_id: bytes, state: bytes, contact_id: str) -> None:
        self._x(
            "UPDATE invitations SET state = ?, contact_id = ? WHERE id = ?",
            (state, contact_id, invitation_id),
        )

    def expire_invitations(self, now_ms: int, give_up_ms: int) -> int:
        """Drop invitations past expiry; the queues of unused ones are doomed."""
        with self.transaction():
            expired = [
                _bytes(r[0])
                for r in self._x("SELECT id FROM invitations WHERE expires_ms <= ?", (now_ms,))
            ]
            for inv in expired:
                self._x(
                    "UPDATE queues SET kind = ?, owner = '', retire_ms = ?"
                    " WHERE kind = ? AND owner = ?",
                    (int(QueueKind.DOOMED), give_up_ms, int(QueueKind.INVITATION), inv.hex()),
                )
                self._x("DELETE FROM invitations WHERE id = ?", (inv,))
        return len(expired)

    # ------------------------------------------------------------------ messages

    def insert_message(self, m: NewMessage) -> int | None:
        """Store a message; None if one with the same (contact, direction, msg_id) exists."""
        self._x(
            "INSERT OR IGNORE INTO messages (contact_id, outgoing, msg_id, seq, state, flags,"
            " body, sent_ms, stored_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.contact_id,
                int(m.outgoing),
                m.msg_id,
                m.seq,
                m.state.value,
                m.flags,
                m.body,
                m.sent_ms,
                m.stored_ms,
                m.expires_ms,
            ),
        )
        if not self._x("SELECT changes()")[0][0]:
            return None
        return _int(self._x("SELECT last_insert_rowid()")[0][0])

    def message(self, message_id: int) -> MessageInfo | None:
        rows = self._x(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))  # noqa: S608 (constant column list)
        return _message(rows[0]) if rows else None

    def messages(self, contact_id: str, limit: int) -> list[MessageInfo]:
        rows = self._x(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE contact_id = ?"  # noqa: S608 (constant column list)
            " ORDER BY id DESC LIMIT ?",
            (contact_id, limit),
        )
        return [_message(r) for r in reversed(rows)]

    def unread(self) -> list[MessageInfo]:
        rows = self._x(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE state = ? ORDER BY id",  # noqa: S608 (constant column list)
            (MessageState.UNREAD.value,),
        )
        return [_message(r) for r in rows]

    def mark_read(self, contact_id: str | None, up_to: int | None = None) -> int:
        sql = "UPDATE messages SET state = ? WHERE state = ?"
        params: list[SqlValue] = [MessageState.READ.value, MessageState.UNREAD.value]
        if contact_id is not None:
            sql += " AND contact_id = ?"
            params.append(contact_id)
        if up_to is not None:
            sql += " AND id <= ?"
            params.append(up_to)
        self._x(sql, params)
        return _int(self._x("SELECT changes()")[0][0])

    def set_message_state(
        self, message_id: int, state: MessageState, only_from: Sequence[MessageState]
    ) -> bool:
        """Move an outgoing message to ``state`` if it is in one of ``only_from``."""
        marks = ", ".join("?" for _ in only_from)
        self._x(
            f"UPDATE messages SET state = ? WHERE id = ? AND state IN ({marks})",  # noqa: S608 (placeholders only)
            (state.value, message_id, *(s.value for s in only_from)),
        )
        return bool(self._x("SELECT changes()")[0][0])

    def outgoing_by_seq(self, contact_id: str, seq: int) -> tuple[int, bytes, str, int] | None:
        """(row id, msg_id, text, flags) of the outgoing message last sent under ``seq``,
        if the contact has not yet confirmed storing it.

        A message the contact's device acknowledged with a receipt is never sent again: a
        captured contact could otherwise ask for the whole stored history, including what
        already disappeared on the captured phone.
        """
        rows = self._x(
            "SELECT id, msg_id, body, flags FROM messages"
            " WHERE contact_id = ? AND outgoing = 1 AND seq = ? AND state IN (?, ?)",
            (contact_id, seq, MessageState.QUEUED.value, MessageState.SENT.value),
        )
        if not rows:
            return None
        r = rows[0]
        return _int(r[0]), _bytes(r[1]), _str(r[2]), _int(r[3])

    def outgoing_by_msg_id(self, contact_id: str, msg_id: bytes) -> int | None:
        rows = self._x(
            "SELECT id FROM messages WHERE contact_id = ? AND outgoing = 1 AND msg_id = ?",
            (contact_id, msg_id),
        )
        return _int(rows[0][0]) if rows else None

    def set_message_seq(self, message_id: int, seq: int) -> None:
        self._x("UPDATE messages SET seq = ? WHERE id = ?", (seq, message_id))

    def next_expiry(self) -> int | None:
        rows = self._x("SELECT min(expires_ms) FROM messages WHERE expires_ms IS NOT NULL")
        return _opt_int(rows[0][0]) if rows else None

    def expire_messages(self, now_ms: int) -> dict[str, int]:
        """Delete every message whose time is up; returns how many per contact."""
        with self.transaction():
            rows = self._x(
                "SELECT contact_id, count(*) FROM messages"
                " WHERE expires_ms IS NOT NULL AND expires_ms <= ? GROUP BY contact_id",
                (now_ms,),
            )
            self._x(
                "DELETE FROM messages WHERE expires_ms IS NOT NULL AND expires_ms <= ?", (now_ms,)
            )
        return {_str(r[0]): _int(r[1]) for r in rows}

    # ------------------------------------------------------------------ outbox

    def insert_outbox(self, o: NewOutbox, message_id: int | None = None) -> int:
        self._x(
            "INSERT INTO outbox (contact_id, relay, sender_id, auth_seed, block, kind, message_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (o.contact_id, o.relay, o.sender_id, o.auth_seed, o.block, int(o.kind), message_id),
        )
        return _int(self._x("SELECT last_insert_rowid()")[0][0])

    def outbox(self, relay: str | None = None) -> list[OutboxRow]:
        if relay is None:
            rows = self._x(f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY id")  # noqa: S608 (constant column list)
        else:
            rows = self._x(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE relay = ? ORDER BY id",  # noqa: S608 (constant column list)
                (relay,),
            )
        return [_outbox(r) for r in rows]

    def outbox_relays(self) -> list[str]:
        return [_str(r[0]) for r in self._x("SELECT DISTINCT relay FROM outbox")]

    def outbox_count(self) -> int:
        return _int(self._x("SELECT count(*) FROM outbox")[0][0])

    def delete_outbox(self, outbox_id: int) -> bool:
        self._x("DELETE FROM outbox WHERE id = ?", (outbox_id,))
        return bool(self._x("SELECT changes()")[0][0])

    def outbox_row(self, outbox_id: int) -> OutboxRow | None:
        rows = self._x(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (outbox_id,))  # noqa: S608 (constant column list)
        return _outbox(rows[0]) if rows else None

    def outbox_elsewhere(self, relay: str) -> dict[str, int]:
        """Per contact, the oldest outbox row bound for another relay than ``relay``: rows of
        that contact after it must wait (a contact's blocks leave in the order they were made,
        across relays too)."""
        rows = self._x(
            "SELECT contact_id, min(id) FROM outbox WHERE relay != ? GROUP BY contact_id",
            (relay,),
        )
        return {_str(r[0]): _int(r[1]) for r in rows}

    def outbox_relays_of(self, contact_id: str) -> list[str]:
        rows = self._x("SELECT DISTINCT relay FROM outbox WHERE contact_id = ?", (contact_id,))
        return [_str(r[0]) for r in rows]

    def delete_message_outbox(self, message_id: int) -> None:
        self._x("DELETE FROM outbox WHERE message_id = ?", (message_id,))

    def delete_contact_outbox(self, contact_id: str) -> None:
        self._x("DELETE FROM outbox WHERE contact_id = ?", (contact_id,))
