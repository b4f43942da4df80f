"""The relay's embedded default store: one SQLite file, one writer thread, batched commits.

Theory of operation
-------------------
The relay answers ``SEND`` and ``ACK`` only after :meth:`SQLiteStore.put_message` and
:meth:`SQLiteStore.ack` return, so both must be *durable* by then: a ``kill -9`` (or a power
cut) right after the answer must not lose an accepted message nor resurrect an acknowledged
one. Committing each call separately would cost one fsync per message, so writes are batched:

- Every write is a small function of the connection (an *op*), or a put or an ack. A caller
  puts it on a thread-safe queue synchronously, at the call, so jobs run in call order (and
  per-queue message order is call order, as the contract requires), then awaits a future.
- One writer thread owns the only write connection. Each *cycle* takes everything queued (up
  to ``batch_max``), runs it in one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, and only
  after ``COMMIT`` returns does it resolve the cycle's futures (one wake-up of the event loop
  per cycle, not per job).
- An op that refuses (unknown queue, quota, wrong sender key, duplicate id) raises a
  :class:`~kith.errors.StoreError` *before* it writes anything, so the rest of its cycle
  commits unaffected. An op that fails unexpectedly runs inside a savepoint and undoes only
  itself. If SQLite itself fails (I/O error, disk full, locked), the transaction is rolled
  back and every caller that needed it gets :class:`~kith.errors.StoreUnavailable`: never a
  false success.

Staging
-------
A put is not written at once, and most never cross to the writer thread. The event loop holds
a *lease* on each queue it has sent to recently: the queue's recipient id, sender key, last
seq handed out, and the count and bytes of its messages. The writer grants it (a ``_Grant``
job reads the queue row; puts for that queue wait in call order meanwhile) and reports every
later change it makes to those counts (an ACK of a written message, expiry, a failed insert)
in the same ordered report that settles its futures, after each commit. With the lease, a put
is checked on the loop as the insert would check it (sender key, quota, the store-wide cap),
given the next seq, and handed to the ``accepted`` callback, which pushes it to a local
subscriber and says whether it did:

- a message that was *delivered* is held (staged) in memory. If the recipient's ACK arrives
  first, it is never written: the ACK and the put both complete on the loop, and the put's
  caller learns that the message was delivered and acknowledged, which is at least as final
  as durable. Otherwise it goes to the writer after the *hold*;
- a message nobody was sent cannot be acknowledged, so it goes to the writer at the end of
  the loop turn (unless held messages of its queue are still waiting: each queue is handed to
  the writer in seq order, so that a read never sees a later message without an earlier one).

The hold starts at ``stage_seconds`` and follows how late ACKs come (:meth:`_adjust_hold`):
a relay under load reads them late, and a hold shorter than that would write, then delete,
nearly every message. At most :data:`_STAGE_MAX` messages are held and none longer than
:data:`_STAGE_MAX_HOLD`. A put completes (the sender's OK) only once its message is committed
or acknowledged, so a crash loses only puts that were never answered, and the sender sends
those again.

A command that changes the queue (``secure_queue``, ``delete_queue``) *revokes* the lease in
the same step as it queues its op: the queue's held messages go to the writer ahead of the
op (they came before it), and the next put asks for a new lease, read after the op. A lease
granted from a read made before a revocation that happened while it was on its way serves
only the puts called before the revocation; it is then revoked at once and the later puts
ask again. Idle leases are handed back past :data:`_LEASE_MAX`.

Because a message acknowledged while held is never inserted, the insert trigger never records
its seq in ``queues.last_seq``: a lease handed back carries its last seq to the writer, which
writes it to the row (and covers it in its next grant until that commit succeeds). A crash
loses the leases; the seqs of messages acknowledged while held may then be handed out again,
which is harmless: a seq orders one queue's messages for the connections of one relay
process, a crash ends them all, and no row holds such a seq.

Reads use a second connection on a single reader thread. WAL mode lets them run while the
writer commits, and because a future resolves only after ``COMMIT``, a read issued after an
awaited write always sees it.

Durability choice: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode ``NORMAL``
already survives a *process* crash (a committed transaction is in the WAL file in the OS page
cache before ``COMMIT`` returns), but not an OS crash or power loss, which could silently drop
the last messages the relay had acknowledged. ``FULL`` fsyncs the WAL at every commit; batching
makes that one fsync per cycle, so the stronger guarantee costs little throughput, and staging
spares the writes (and the fsync) of messages acknowledged in time.

Deletion: ``secure_delete=ON`` makes SQLite overwrite deleted rows and freed pages with zeros,
so acknowledged ciphertext does not linger in the database file. Older page images can remain
in the WAL file until it is recycled (it is truncated to ``journal_size_limit`` after
checkpoints and to zero on close); the filesystem may keep freed blocks. Operators should
still run the relay on an encrypted disk. The database holds nothing but ciphertext, ids and
public keys, hence stdlib ``sqlite3`` and no SQLCipher.

Files: the database and its ``-wal``/``-shm`` companions are created mode 0600 (SQLite gives
the companions the database's own mode) and an existing database is tightened to 0600. A
``-lock`` file held with ``flock`` keeps a second relay process off the same database: it
would neither see this process's watchers nor be seen by them.

Schema: ``sqlite_schema_vN.sql`` for the current N (package data) creates a new file directly
at that version. Opening a database whose ``schema_version`` is newer than this code knows fails
with :class:`SchemaError` and changes nothing; an older one is brought up to date by applying
``sqlite_upgrade_vN_to_vN+1.sql`` files in order, each in its own transaction, before the store
accepts any call.

No global arrival order on disk (schema v2): ``messages`` and ``queues`` are ``WITHOUT ROWID``
tables keyed by random queue ids, so no column and no implicit rowid counts rows across queues
in the order they arrived. A rowid would let whoever seizes the file sort messages by arrival
and see which queues alternate (the two queues of one conversation) or arrive in runs (the
member queues of one circle), though ``received_at`` is rounded to the minute. Nothing here may
use ``rowid``; the natural key is ``(recipient_id, seq)``. What the file format still keeps in
write order (WAL frames, page allocation) is in docs/known-attacks.md, "SQLite residue".

Idle queues (schema v3): ``queues.last_used`` holds the week of a queue's last use. Triggers set
it when a queue is created and when a message is stored (inside the statement that already
updates the queue's counters, so a put costs nothing more); ``pending`` and ``touch_queues``
raise it through the writer, at most once per queue per week per process (:class:`UseMarks`).
``expire_queues`` deletes idle queues a few at a time; their messages go by the foreign key's
``ON DELETE CASCADE`` and the counters with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.resources
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from kith.errors import StoreError, StoreUnavailable
from kith.relay.store._common import (
    UseMarks,
    Watchers,
    check_body,
    check_count,
    check_id,
    expiry_cutoff,
    hint_after_caller,
)
from kith.relay.store.base import (
    AcceptFn,
    AlreadySecured,
    DuplicateId,
    Limits,
    NoQueue,
    NotAuthorized,
    NotifyFn,
    QueueRecord,
    QuotaExceeded,
    StoredMessage,
    StoredRef,
    idle_cutoff,
)

T = TypeVar("T")

log = logging.getLogger("kith.relay")

#: The schema version this code writes and reads.
SCHEMA_VERSION: Final = 3

#: Upper bound on ops per transaction: keeps one commit's latency bounded under a flood.
DEFAULT_BATCH_MAX: Final = 4096

#: Rows one expire op deletes before letting queued puts and acks through.
_EXPIRE_CHUNK: Final = 2000

#: Idle queues one expire_queues op deletes (each may hold up to its quota of messages).
_IDLE_CHUNK: Final = 16

_FILE_MODE: Final = 0o600


class SchemaError(StoreError):
    """The database file is not one this version of kith can use (newer, or not kith's)."""


class StoreInUse(StoreError):
    """Another process already has this database open as a relay store."""


#: Seconds a stored message is held in memory before it is written (see "Staging").
DEFAULT_STAGE_SECONDS: Final = 0.02  # keep in step with RelaySettings.stage_ms

#: Most messages held in memory at once; past this the oldest are written at once.
_STAGE_MAX: Final = 8192

#: The longest the hold may stretch to while acknowledgements come late (see "Staging").
_STAGE_MAX_HOLD: Final = 1.0

#: Past this share of held messages written unacknowledged, the hold stretches.
_MISS_SHARE: Final = 0.02

#: Leases the event loop keeps (see "Staging"); past this the idle ones are handed back.
_LEASE_MAX: Final = 65_536

_Op = Callable[[sqlite3.Connection], Any]
_STOP: Final = object()


@dataclass(slots=True, eq=False)
class _Put:
    """A put on its way: checked and numbered when staged (``ref`` set), written when due,
    or never written if its ACK arrives first."""

    sid: bytes
    mid: bytes
    body: bytes
    now: int
    max_messages: int
    max_bytes: int
    max_store_bytes: int
    sender_key: bytes | None
    accepted: AcceptFn | None
    fut: asyncio.Future[StoredRef]
    ref: StoredRef | None = None
    staged_at: float = 0.0
    delivered: bool = False  # pushed to a subscriber when staged
    order: int = 0  # while waiting for a lease: when it was called (see _granted)


@dataclass(slots=True, eq=False)
class _Lease:
    """The event loop's authority over one queue (see "Staging"): its sender key, the last seq
    handed out, and the messages it holds (committed, on their way to the writer, or staged),
    as the writer last reported them plus what the loop has staged and elided since."""

    rid: bytes
    sid: bytes
    sender_key: bytes | None
    last_seq: int
    granted_seq: int  # last_seq when granted: a lease that gave out no seq needs no write-back
    count: int
    nbytes: int
    staged: int = 0  # of its messages, how many are staged in the loop right now


@dataclass(slots=True, eq=False)
class _Grant:
    """Writer job: read a queue's row (by sender id) to grant the loop a lease on it."""

    sid: bytes


@dataclass(slots=True, eq=False)
class _Write:
    """Writer job: insert staged puts (in order), and record the last seqs of leases handed
    back (``releases``: recipient id, last seq given out)."""

    puts: list[_Put]
    releases: list[tuple[bytes, int]]
    done: int = 0  # puts already answered in the current cycle


@dataclass(slots=True, eq=False)
class _Ack:
    rid: bytes
    mid: bytes


# What the writer reports to the event loop, in the order it happened, after each commit:
# (kind, a, b, c, needs the commit). An event that needs the commit is turned into a failure
# (settle, grant) or dropped (adjust, gone) when the transaction rolls back.
_SETTLE: Final = 0  # a: future, b: ok, c: value or exception
_GRANT: Final = 1  # a: sender id, b: (rid, sender key, last seq, count, bytes), None or exception
_ADJUST: Final = 2  # a: recipient id, b: change in message count, c: change in bytes
_GONE: Final = 3  # a: recipient id of a deleted queue
_Event = tuple[int, Any, Any, Any, bool]


def _schema_sql(name: str) -> str | None:
    res = importlib.resources.files("kith.relay.store").joinpath(name)
    return res.read_text(encoding="utf-8") if res.is_file() else None


def _unavailable(exc: BaseException) -> StoreUnavailable:
    err = StoreUnavailable(f"sqlite store failed: {exc}")
    err.__cause__ = exc
    return err


class SQLiteStore:
    """The relay store contract on one SQLite file. One relay process per file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_max: int = DEFAULT_BATCH_MAX,
        stage_seconds: float = DEFAULT_STAGE_SECONDS,
    ):
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if not 0 <= stage_seconds <= 1:
            raise ValueError("stage_seconds must be between 0 and 1")
        self._path = Path(path)
        self._batch_max = batch_max
        self._stage_seconds = stage_seconds
        # Event-loop state (see "Staging"). Leases by sender id and by recipient id; puts
        # waiting for a lease, by sender id; staged puts in staging order, by (queue, id).
        self._leases: dict[bytes, _Lease] = {}
        self._by_rid: dict[bytes, _Lease] = {}
        self._waiting: dict[bytes, list[_Put]] = {}
        # Revocations that a lease read still on its way may have missed: recipient id -> the
        # ticks at which the queue was revoked; and the tick of each grant request in flight,
        # by sender id (see _granted). Puts waiting for a lease carry their own tick.
        self._revoked: dict[bytes, list[int]] = {}
        self._requested: dict[bytes, int] = {}
        self._ticks = 0
        self._staged: OrderedDict[tuple[bytes, bytes], _Put] = OrderedDict()
        self._timer: asyncio.Handle | None = None
        self._direct: list[_Put] = []  # checked, not delivered: written at the end of the turn
        self._direct_handle: asyncio.Handle | None = None
        # How long delivered messages are held now (see "Staging"), and what the holding
        # achieved since it was last adjusted: held messages acknowledged in time, the longest
        # they waited, and held messages written unacknowledged.
        self._hold = stage_seconds
        self._hits = 0
        self._hit_max = 0.0
        self._misses = 0
        # Bytes of messages held (written, on their way, or staged), for the store-wide cap.
        self._held = 0
        # Writer-thread state: this cycle's events and inserted puts; the last seqs of leases
        # handed back and not yet written to their queue rows.
        self._events: list[_Event] = []
        self._inserted: list[_Put] = []
        self._floors: dict[bytes, int] = {}
        self._backoff = 0.0
        self._dead = False  # the writer thread has died
        # Aggregate counts for metrics (counters()).
        self._elided = 0
        self._written = 0
        self._watchers = Watchers()
        self._marks = UseMarks()
        self._notify: NotifyFn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ops: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._running = False
        self._closed = False
        self._stopping = False  # close() is handing everything to the writer
        self._granting: asyncio.Future[None] | None = None  # close() waits for leases

    # ------------------------------------------------------------------ lifecycle

    async def start(self, notify: NotifyFn) -> None:
        if self._closed or self._running:
            raise StoreUnavailable("store already started or closed")
        self._loop = asyncio.get_running_loop()
        self._notify = notify
        try:
            await asyncio.to_thread(self._open)
        except BaseException:
            await asyncio.to_thread(self._release)
            raise
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kith-sqlite-read")
        self._writer = threading.Thread(
            target=self._writer_main, args=(self._wconn,), name="kith-sqlite-write", daemon=True
        )
        self._writer.start()
        self._running = True

    async def close(self) -> None:
        """Write every staged message, hand back every lease, finish every write already
        queued, then release files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        self._watchers.clear()
        while self._waiting and not self._dead:
            # Puts already called wait for their leases: let those come back and stage them.
            self._granting = asyncio.get_running_loop().create_future()
            await self._granting
        self._stopping = True
        for handle in (self._timer, self._direct_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._direct_handle = None
        if self._writer is not None and (self._staged or self._leases or self._direct):
            puts = self._direct + list(self._staged.values())
            self._direct = []
            self._staged.clear()
            releases = [_released(lease) for lease in self._leases.values()]
            self._leases.clear()
            self._by_rid.clear()
            self._enqueue(_Write(puts, releases), None)
        if self._reader is not None:
            self._reader.shutdown(wait=False)
            await asyncio.to_thread(self._reader.shutdown, wait=True)
        if self._writer is not None:
            self._ops.put(_STOP)
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._release)

    def _open(self) -> None:
        """Open (or create) the file, refusing, before changing anything, a file that is not
        a relay store this code understands."""
        path = self._path
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE))  # a new file is 0600
        self._lock_fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(f"{path} is already open in another relay process") from None

        try:
            w = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._wconn = w
            version = self._schema_version(w)
            for name in (path, f"{path}-wal", f"{path}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(name, _FILE_MODE)  # tighten a file an older setup left readable
            if w.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise StoreUnavailable("sqlite refused WAL mode")
            w.execute("PRAGMA synchronous=FULL")
            w.execute("PRAGMA secure_delete=ON")
            if w.execute("PRAGMA secure_delete").fetchone()[0] != 1:
                # Fail closed, as the relay promises that delivered ciphertext is erased.
                raise StoreUnavailable("sqlite cannot delete securely")
            w.execute("PRAGMA foreign_keys=ON")
            w.execute("PRAGMA journal_size_limit=16777216")
            w.execute("PRAGMA cache_size=-16000")
            self._migrate(w, version)
            self._held = int(
                w.execute("SELECT coalesce(sum(msg_bytes), 0) FROM queues").fetchone()[0]
            )
            r = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._rconn = r
            r.execute("PRAGMA query_only=ON")
            r.execute("PRAGMA cache_size=-16000")
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
            raise SchemaError(f"{path} is not a usable SQLite database: {exc}") from exc

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        """The file's schema version (0: empty file); SchemaError if we must not touch it."""
        tables = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "schema_version" not in tables:
            if tables:
                raise SchemaError("database exists but is not a kith relay store")
            return 0
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        if version == 0:
            raise SchemaError("kith relay store has no schema version")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"relay database has schema v{version}, newer than this kith understands "
                f"(v{SCHEMA_VERSION}); upgrade kith or use the matching release"
            )
        return version

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        """Bring a file at ``version`` (0: empty) up to SCHEMA_VERSION, one step per file."""
        while version < SCHEMA_VERSION:
            name = (
                f"sqlite_schema_v{SCHEMA_VERSION}.sql"
                if version == 0
                else f"sqlite_upgrade_v{version}_to_v{version + 1}.sql"
            )
            script = _schema_sql(name)
            if script is None:
                raise SchemaError(f"no upgrade path from relay schema v{version} ({name})")
            target = SCHEMA_VERSION if version == 0 else version + 1
            try:
                conn.executescript(f"BEGIN IMMEDIATE;\n{script}")
                (reached,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                if reached != target:
                    raise SchemaError(f"{name} left the schema at v{reached}, not v{target}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            version = target

    def _release(self) -> None:
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._rconn = self._wconn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ the writer

    def _submit(self, op: _Op) -> asyncio.Future[Any]:
        """Queue ``op`` now (synchronously: this fixes its order) and return its future."""
        if not self._running or self._loop is None:
            raise StoreUnavailable("store is not running")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(op, fut)
        return fut

    def _enqueue(self, job: object, fut: asyncio.Future[Any] | None) -> None:
        """Hand a job to the writer (on the event loop)."""
        self._ops.put((job, fut))
        if self._dead:
            # The writer died after it drained the queue: nobody will take this job. (If it
            # did take it, the second answer finds its futures done and its grant taken.)
            self._apply(_failed_job(job, fut, StoreUnavailable("store writer stopped")))

    def _writer_main(self, conn: sqlite3.Connection) -> None:
        jobs: list[tuple[object, asyncio.Future[Any] | None]] = []
        try:
            while True:
                item = self._ops.get()
                stop = item is _STOP
                if not stop:
                    jobs.append(item)  # type: ignore[arg-type]
                while not stop and len(jobs) < self._batch_max:
                    try:
                        item = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        jobs.append(item)  # type: ignore[arg-type]
                self._cycle(conn, jobs)
                jobs = []
                if stop:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    return
        except BaseException as exc:
            # The writer itself broke: fail everything that is waiting on it, and refuse more.
            self._running = False
            self._dead = True
            while True:
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    jobs.append(item)  # type: ignore[arg-type]
            err = _unavailable(exc)
            for job, _ in jobs:
                if type(job) is _Write:
                    job.done = 0  # its answers from the dying cycle were never posted
            events = [e for job, fut in jobs for e in _failed_job(job, fut, err)]
            self._post(events)
            raise

    def _cycle(
        self, conn: sqlite3.Connection, jobs: Sequence[tuple[object, asyncio.Future[Any] | None]]
    ) -> None:
        """One transaction: run ``jobs`` in order, write the last seqs of leases handed back,
        commit, then report every outcome to the event loop (after the commit)."""
        if not jobs and not self._floors:
            return
        events: list[_Event] = []
        self._events = events
        self._inserted = []
        floors: list[tuple[bytes, int]] = []
        done = 0  # jobs fully handled
        for job, _ in jobs:
            # Leases handed back: their last seqs count from now on, whatever becomes of this
            # transaction (a seq handed out twice would make the relay skip a message).
            if type(job) is _Write:
                for rid, seq in job.releases:
                    self._floors[rid] = max(seq, self._floors.get(rid, 0))
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, fut in jobs:
                jtype = type(job)
                if jtype is _Write:
                    self._write_puts(conn, job)  # type: ignore[arg-type]
                elif jtype is _Ack:
                    self._ack(conn, job, fut)  # type: ignore[arg-type]
                elif jtype is _Grant:
                    self._grant(conn, job)  # type: ignore[arg-type]
                else:
                    self._run_op(conn, job, fut)  # type: ignore[arg-type]
                done += 1
            floors = self._write_floors(conn)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 -- SQLite failed (or a bug): fail the cycle, not the writer
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            err = _unavailable(exc)
            # What needed this transaction fails (settles, grants) or never happened (adjusts,
            # deletions); so does every job not yet handled. Refusals stand.
            kept: list[_Event] = []
            for event in events:
                if not event[4]:
                    kept.append(event)
                elif event[0] == _SETTLE:
                    kept.append((_SETTLE, event[1], False, err, True))
                elif event[0] == _GRANT:
                    kept.append((_GRANT, event[1], err, None, True))
            for put in self._inserted:  # answered with err just above: no longer held
                kept.append(_dropped(put))
            for job, fut in jobs[done:]:
                kept += _failed_job(job, fut, err)
            events = kept
            self._backoff = min(1.0, max(0.05, self._backoff * 2))
        else:
            for rid, seq in floors:
                if self._floors.get(rid) == seq:
                    del self._floors[rid]
            self._backoff = 0.0
        self._inserted = []
        if events:
            self._post(events)
        if self._backoff:
            time.sleep(self._backoff)  # the database is failing: do not spin on it

    def _post(self, events: list[_Event]) -> None:
        loop = self._loop
        if loop is not None and events:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(self._apply, events)

    def _run_op(self, conn: sqlite3.Connection, op: _Op, fut: asyncio.Future[Any]) -> None:
        """Run one ordinary op inside a savepoint, so an op that fails undoes only itself
        (and the events it reported)."""
        events = self._events
        mark = len(events)
        conn.execute("SAVEPOINT op")
        try:
            value = op(conn)
        except StoreError as exc:  # refused before writing: the batch goes on
            conn.execute("RELEASE op")
            del events[mark:]
            events.append((_SETTLE, fut, False, exc, False))
        except sqlite3.OperationalError:
            raise  # the database itself is failing: the whole cycle fails
        except Exception as exc:  # noqa: BLE001 -- a bug in one op must not sink the others
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            del events[mark:]
            events.append((_SETTLE, fut, False, exc, False))
        else:
            conn.execute("RELEASE op")
            events.append((_SETTLE, fut, True, value, True))

    def _grant(self, conn: sqlite3.Connection, job: _Grant) -> None:
        row = conn.execute(
            "SELECT recipient_id, sender_key, last_seq, msg_count, msg_bytes"
            " FROM queues WHERE sender_id = ?",
            (job.sid,),
        ).fetchone()
        grant: tuple[bytes, bytes | None, int, int, int] | None = None
        if row is not None:
            rid, skey = bytes(row[0]), None if row[1] is None else bytes(row[1])
            # A lease handed back in a cycle that failed gave out seqs its row does not show.
            grant = (rid, skey, max(row[2], self._floors.get(rid, 0)), row[3], row[4])
        self._events.append((_GRANT, job.sid, grant, None, True))

    def _write_puts(self, conn: sqlite3.Connection, job: _Write) -> None:
        """Insert staged puts in order. All at once when nothing goes wrong; otherwise one by
        one, so that a refused put (its queue deleted meanwhile, an id already written, a
        value SQLite cannot bind) fails alone."""
        puts = job.puts
        if not puts:
            return
        events = self._events
        if job.done == 0:
            conn.execute("SAVEPOINT w")
            try:
                conn.executemany(_INSERT_SQL, [_row(put) for put in puts])
            except sqlite3.OperationalError:
                raise  # the database itself is failing: the whole cycle fails
            except Exception:  # noqa: BLE001 -- one put is at fault: find it below
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
            else:
                conn.execute("RELEASE w")
                for put in puts:
                    events.append((_SETTLE, put.fut, True, put.ref, True))
                self._inserted += puts
                self._written += len(puts)
                job.done = len(puts)
                return
        for i in range(job.done, len(puts)):
            put = puts[i]
            try:
                conn.execute(_INSERT_SQL, _row(put))
            except sqlite3.IntegrityError as exc:
                # The queue went (deleted or expired after the put was staged), or an id
                # collided: this put fails; nothing was written.
                err: Exception = (
                    DuplicateId("message id already in this queue")
                    if "msg_id" in str(exc)
                    else NoQueue("no such queue")
                )
                events += [(_SETTLE, put.fut, False, err, False), _dropped(put)]
            except _BIND_ERRORS as exc:  # a value SQLite cannot bind: this put only
                events += [(_SETTLE, put.fut, False, exc, False), _dropped(put)]
            except sqlite3.Error:
                raise  # the database is failing (disk full, I/O): the whole cycle fails
            except Exception as exc:  # noqa: BLE001 -- anything else about this value: this put only
                events += [(_SETTLE, put.fut, False, exc, False), _dropped(put)]
            else:
                events.append((_SETTLE, put.fut, True, put.ref, True))
                self._inserted.append(put)
                self._written += 1
            job.done = i + 1

    def _ack(self, conn: sqlite3.Connection, ack: _Ack, fut: asyncio.Future[Any]) -> None:
        row = conn.execute(
            "DELETE FROM messages WHERE recipient_id = ? AND msg_id = ? RETURNING length(body)",
            (ack.rid, ack.mid),
        ).fetchone()
        events = self._events
        if row is not None:
            events.append((_ADJUST, ack.rid, -1, -row[0], True))
            events.append((_SETTLE, fut, True, True, True))
        elif not _exists(conn, ack.rid):
            events.append((_SETTLE, fut, False, NoQueue("no such queue"), False))
        else:
            events.append((_SETTLE, fut, True, False, True))

    def _write_floors(self, conn: sqlite3.Connection) -> list[tuple[bytes, int]]:
        """Record in their queue rows the last seqs of leases handed back. A message
        acknowledged while staged is never inserted, so the row's last_seq does not cover its
        seq; a seq handed out twice would make the relay skip a message. Until the commit
        (and after a failed one) ``_floors`` covers them for the next grant.

        A crash loses what was not yet written, and seqs of messages acknowledged while
        staged may then be handed out again: harmless, because a seq orders one queue's
        messages for the connections of one relay process, and a crash ends them all (no
        row and no subscription holds such a seq)."""
        items = list(self._floors.items())
        if items:
            conn.executemany(
                "UPDATE queues SET last_seq = ? WHERE recipient_id = ? AND last_seq < ?",
                [(seq, rid, seq) for rid, seq in items],
            )
        return items

    def _report(self, event: _Event) -> None:
        """For ops (writer thread): report an event with this op's outcome."""
        self._events.append(event)

    # ------------------------------------------------------------------ staging (event loop)

    def _apply(self, events: list[_Event]) -> None:
        """Carry out the writer's report (on the event loop), in the order it happened."""
        loop = self._loop
        for kind, a, b, c, _ in events:
            if kind == _SETTLE:
                if a.done():  # the caller was cancelled; the job still ran (or not) as reported
                    continue
                if b:
                    a.set_result(c)
                    if type(c) is StoredRef and c.recipient_id in self._watchers and loop:
                        # A message written: tell a local subscriber that did not get it
                        # pushed, after the put's caller has seen the result (the relay
                        # pushes straight from it, and the hint is then stale).
                        hint_after_caller(loop, self._hint, c.recipient_id, c.seq)
                else:
                    a.set_exception(c)
            elif kind == _ADJUST:
                self._held += c
                lease = self._by_rid.get(a)
                if lease is not None:
                    lease.count += b
                    lease.nbytes += c
            elif kind == _GRANT:
                self._granted(a, b)
            else:  # _GONE: the queue was deleted; its staged messages fail when written
                lease = self._by_rid.pop(a, None)
                if lease is not None:
                    del self._leases[lease.sid]

    def _granted(self, sid: bytes, grant: object) -> None:
        """The writer read the queue for a lease: stage the puts that waited for it."""
        puts = self._waiting.pop(sid, None)
        if puts is None:
            return
        asked = self._requested.pop(sid)
        if not self._waiting and self._granting is not None and not self._granting.done():
            self._granting.set_result(None)
        refusal: Exception | None = None
        if isinstance(grant, Exception):
            refusal = grant
        elif grant is None:
            refusal = NoQueue("no such queue")
        elif self._stopping:
            refusal = StoreUnavailable("store is closing")
        if refusal is not None:
            for put in puts:
                _fail(put.fut, refusal)
            self._prune_revoked()
            return
        assert isinstance(grant, tuple)  # noqa: S101 -- _grant reports nothing else
        rid, skey, last_seq, count, nbytes = grant
        # The first revocation of this queue after the request: the writer read the row
        # before the change it announced (KEY, DEL), so the read is right only for the puts
        # called before it.
        cut = next((tick for tick in self._revoked.get(rid, ()) if tick > asked), None)
        self._prune_revoked()
        lease = _Lease(rid, sid, skey, last_seq, last_seq, count, nbytes)
        self._leases[sid] = self._by_rid[rid] = lease
        if cut is None:
            for put in puts:
                self._stage(lease, put)
        else:
            # Those are staged, and handed to the writer at once (behind the change); the
            # later ones ask again, and the new read comes after the change.
            for put in puts:
                if put.order < cut:
                    self._stage(lease, put)
            self._revoke(rid, record=False)
            later = [put for put in puts if put.order > cut]
            if later:
                self._request(sid, later)
        if len(self._leases) > _LEASE_MAX:
            self._evict()

    def _tick(self) -> int:
        self._ticks += 1
        return self._ticks

    def _prune_revoked(self) -> None:
        """Forget revocations that no lease read in flight can have missed."""
        if not self._revoked:
            return
        oldest = min(self._requested.values(), default=None)
        if oldest is None:
            self._revoked.clear()
            return
        for rid in list(self._revoked):
            ticks = [tick for tick in self._revoked[rid] if tick > oldest]
            if ticks:
                self._revoked[rid] = ticks
            else:
                del self._revoked[rid]

    def _request(self, sid: bytes, puts: list[_Put]) -> None:
        self._waiting[sid] = puts
        self._requested[sid] = self._tick()
        self._enqueue(_Grant(sid), None)

    def _stage(self, lease: _Lease, put: _Put) -> None:
        """Check a put against its queue (as the insert would), give it the next seq, and hold
        it until it is due; a refusal fails the put at once and stages nothing."""
        size = len(put.body)
        rid = lease.rid
        key = (rid, put.mid)
        refusal: StoreError | None = None
        if lease.sender_key is not None and put.sender_key != lease.sender_key:
            refusal = NotAuthorized("queue is secured")
        elif lease.count + 1 > put.max_messages or lease.nbytes + size > put.max_bytes:
            refusal = QuotaExceeded("queue is full")
        elif put.max_store_bytes and self._held + size > put.max_store_bytes:
            refusal = QuotaExceeded("relay store is full")
        elif key in self._staged:
            # (An id already written is refused by the insert's UNIQUE constraint.)
            refusal = DuplicateId("message id already in this queue")
        if refusal is not None:
            _fail(put.fut, refusal)
            return
        lease.last_seq = seq = lease.last_seq + 1
        lease.count += 1
        lease.nbytes += size
        self._held += size
        put.ref = ref = StoredRef(rid, seq, put.now)
        delivered = False
        if put.accepted is not None:
            try:
                delivered = bool(put.accepted(ref))
            except Exception:
                log.exception("accept callback failed")
        put.delivered = delivered
        loop = self._loop
        assert loop is not None  # noqa: S101 -- set whenever the store is running
        if not (delivered and self._stage_seconds) and not lease.staged:
            # Nobody has it, so no ACK can come for it: write it now (at the end of this
            # turn, with the others). Held messages of its queue would have to go first.
            self._direct.append(put)
            if self._direct_handle is None:
                self._direct_handle = loop.call_soon(self._write_direct)
            return
        lease.staged += 1
        put.staged_at = now = loop.time()
        staged = self._staged
        staged[key] = put
        if self._timer is None:
            self._timer = loop.call_at(now + self._hold, self._flush)
        elif len(staged) > _STAGE_MAX and isinstance(self._timer, asyncio.TimerHandle):
            self._timer.cancel()
            self._timer = loop.call_soon(self._flush)

    def _write_direct(self) -> None:
        if self._direct_handle is not None:
            self._direct_handle.cancel()
            self._direct_handle = None
        puts, self._direct = self._direct, []
        if puts:
            self._enqueue(_Write(puts, []), None)

    def _flush(self) -> None:
        """Hand the held puts that are due (and the oldest past :data:`_STAGE_MAX`) to the
        writer, oldest first, so each queue's messages are written in seq order; then adjust
        the hold."""
        self._timer = None
        loop = self._loop
        if loop is None or self._stopping:
            return
        self._adjust_hold()
        now = loop.time()
        cutoff = now - self._hold
        staged = self._staged
        over = len(staged) - _STAGE_MAX
        batch: list[_Put] = []
        while staged:
            key, put = staged.popitem(last=False)
            if put.staged_at > cutoff and over <= 0:
                staged[key] = put
                staged.move_to_end(key, last=False)
                break
            over -= 1
            lease = self._by_rid.get(key[0])
            if lease is not None:
                lease.staged -= 1
            batch.append(put)
        if batch:
            self._misses += sum(1 for put in batch if put.delivered)
            self._write_direct()  # lower seqs of the same queues may be among them
            self._enqueue(_Write(batch, []), None)
        if staged:
            first = next(iter(staged.values()))
            self._timer = loop.call_at(first.staged_at + self._hold, self._flush)

    def _adjust_hold(self) -> None:
        """Fit the hold to how late ACKs come. A relay under load reads ACKs late (in a
        saturated run, a third of a second after the push): when more than
        :data:`_MISS_SHARE` of held messages were written unacknowledged, hold four times as
        long (up to :data:`_STAGE_MAX_HOLD`); otherwise come down to twice the longest wait
        an ACK took (never below ``stage_seconds``). Only messages that were pushed count: a
        message nobody was sent is not held (or is written with its queue's held ones), so
        recipients that are offline do not stretch it. A subscriber that never acknowledges
        can: the cost is bounded (the hold's cap, :data:`_STAGE_MAX`) and falls on the OK to
        the senders of messages pushed and not acknowledged."""
        hits, misses = self._hits, self._misses
        if hits + misses < 16:
            return
        if misses > _MISS_SHARE * (hits + misses):
            grown = max(self._hold * 4, 4 * self._hit_max, 0.005)
            self._hold = min(_STAGE_MAX_HOLD, grown)
        else:
            self._hold = max(self._stage_seconds, min(self._hold, 2 * self._hit_max))
        self._hits = self._misses = 0
        self._hit_max = 0.0

    def _revoke(self, rid: bytes, *, record: bool = True) -> None:
        """A command is about to change the queue (KEY, DEL): the loop gives up its lease, and
        the queue's staged messages go to the writer ahead of the command, as they came
        before it. The next put asks for a new lease, read after the change."""
        if record and self._requested:
            self._revoked.setdefault(rid, []).append(self._tick())
        lease = self._by_rid.pop(rid, None)
        if lease is None:
            return
        del self._leases[lease.sid]
        # Messages of the queue that nobody was sent have lower seqs than its held ones and
        # must reach the writer first (each queue is written in seq order).
        self._write_direct()
        keys = [key for key in self._staged if key[0] == rid] if lease.staged else []
        puts = [self._staged.pop(key) for key in keys]
        self._enqueue(_Write(puts, [_released(lease)]), None)

    def _evict(self) -> None:
        """Too many leases: hand back those with nothing staged."""
        self._write_direct()  # a new lease must count the messages of the old one
        idle = [lease for lease in self._leases.values() if lease.staged == 0]
        for lease in idle:
            del self._leases[lease.sid]
            del self._by_rid[lease.rid]
        releases = [_released(lease) for lease in idle if lease.last_seq > lease.granted_seq]
        if releases:
            self._enqueue(_Write([], releases), None)

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._submit(op)
        return result

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if not self._running or self._loop is None or self._reader is None:
            raise StoreUnavailable("store is not running")
        conn = self._rconn

        def run() -> T:
            assert conn is not None  # noqa: S101 -- set whenever the store is running
            try:
                return op(conn)
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc

        try:
            return await self._loop.run_in_executor(self._reader, run)
        except RuntimeError as exc:  # executor shut down by close()
            raise StoreUnavailable("store is closed") from exc

    # ------------------------------------------------------------------ queues

    async def create_queue(self, record: QueueRecord, now: int) -> None:
        rid = check_id("recipient_id", record.recipient_id)
        sid = check_id("sender_id", record.sender_id)
        rkey, skey = check_body(record.recipient_key), record.sender_key

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO queues (recipient_id, sender_id, recipient_key, sender_key,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    (rid, sid, rkey, skey, now),
                )
            except sqlite3.IntegrityError:
                raise DuplicateId("queue id already in use") from None

        await self._write(op)

    async def queue_by_recipient(self, recipient_id: bytes) -> QueueRecord | None:
        rid = check_id("recipient_id", recipient_id)
        return await self._read(lambda c: _record(c, "recipient_id", rid))

    async def queue_by_sender(self, sender_id: bytes) -> QueueRecord | None:
        sid = check_id("sender_id", sender_id)
        return await self._read(lambda c: _record(c, "sender_id", sid))

    async def secure_queue(self, recipient_id: bytes, sender_key: bytes) -> None:
        rid = check_id("recipient_id", recipient_id)
        key = check_body(sender_key)

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT sender_key FROM queues WHERE recipient_id = ?", (rid,)
            ).fetchone()
            if row is None:
                raise NoQueue("no such queue")
            if row[0] is None:
                conn.execute("UPDATE queues SET sender_key = ? WHERE recipient_id = ?", (key, rid))
            elif bytes(row[0]) != key:
                raise AlreadySecured("queue already has another sender key")

        self._live()
        self._revoke(rid)  # in the same step as the op is queued: no put can slip between
        await self._write(op)

    async def delete_queue(self, recipient_id: bytes) -> None:
        rid = check_id("recipient_id", recipient_id)

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "DELETE FROM queues WHERE recipient_id = ? RETURNING msg_count, msg_bytes", (rid,)
            ).fetchone()
            if row is None:
                raise NoQueue("no such queue")
            # Its messages went with it, including those just handed over by _revoke.
            self._report((_ADJUST, rid, -row[0], -row[1], True))
            self._report((_GONE, rid, None, None, True))

        self._live()
        self._revoke(rid)
        await self._write(op)

    def _live(self) -> asyncio.AbstractEventLoop:
        if not self._running or self._loop is None:
            raise StoreUnavailable("store is not running")
        return self._loop

    # ------------------------------------------------------------------ messages

    def put_message(
        self,
        sender_id: bytes,
        msg_id: bytes,
        body: bytes,
        now: int,
        limits: Limits,
        sender_key: bytes | None = None,
        *,
        accepted: AcceptFn | None = None,
    ) -> asyncio.Future[StoredRef]:
        sid = check_id("sender_id", sender_id)
        mid = check_id("msg_id", msg_id)
        data = check_body(body)
        fut: asyncio.Future[StoredRef] = self._live().create_future()
        put = _Put(sid, mid, data, now, limits.max_messages, limits.max_bytes,
                   limits.max_store_bytes, sender_key, accepted, fut)
        lease = self._leases.get(sid)
        if lease is not None:
            self._stage(lease, put)
        else:
            put.order = self._tick()
            waiting = self._waiting.get(sid)
            if waiting is not None:
                waiting.append(put)  # behind the puts already waiting for this lease
            else:
                self._request(sid, [put])
        return fut


    def _hint(self, recipient_id: bytes, seq: int | None = None) -> None:
        if self._notify is not None and self._running:
            self._notify(recipient_id, seq)

    async def pending(
        self, recipient_id: bytes, after_seq: int, limit: int, now: int, limits: Limits
    ) -> list[StoredMessage]:
        rid = check_id("recipient_id", recipient_id)
        check_count("limit", limit)
        cutoff = expiry_cutoff(now, limits)

        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                "SELECT seq, msg_id, received_at, body FROM messages"
                " WHERE recipient_id = ? AND seq > ? AND received_at >= ?"
                " ORDER BY seq LIMIT ?",
                (rid, after_seq, cutoff, limit),
            ).fetchall()
            if not rows and not _exists(conn, rid):
                raise NoQueue("no such queue")
            return [StoredMessage(s, bytes(m), t, bytes(b)) for s, m, t, b in rows]

        out = await self._read(op)
        # Delivery matters more than the mark: if the write fails, the read still stands and
        # the mark is written by the next pending or by the sweep's touch_queues.
        with contextlib.suppress(StoreUnavailable):
            await self.touch_queues((rid,), now)
        return out

    def ack(self, recipient_id: bytes, msg_id: bytes) -> asyncio.Future[bool]:
        rid = check_id("recipient_id", recipient_id)
        mid = check_id("msg_id", msg_id)
        fut: asyncio.Future[bool] = self._live().create_future()
        put = self._staged.pop((rid, mid), None)
        if put is None:
            self._enqueue(_Ack(rid, mid), fut)
            return fut
        # Acknowledged before it was written: it never will be. The sender's put is done (its
        # message was delivered and acknowledged), and so is this ACK.
        size = len(put.body)
        self._held -= size
        lease = self._by_rid.get(rid)
        if lease is not None:
            lease.count -= 1
            lease.nbytes -= size
            lease.staged -= 1
        self._elided += 1
        self._hits += 1
        loop = self._loop
        assert loop is not None  # noqa: S101 -- set whenever the store is running
        waited = loop.time() - put.staged_at
        self._hit_max = max(self._hit_max, waited)
        if not put.fut.done():
            put.fut.set_result(put.ref)  # type: ignore[arg-type]  # set when staged
        fut.set_result(True)
        return fut

    async def expire(self, now: int, limits: Limits) -> int:
        """Delete expired messages in chunks, so puts and acks are not stalled behind it."""
        cutoff = expiry_cutoff(now, limits)

        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "DELETE FROM messages WHERE (recipient_id, seq) IN"
                " (SELECT recipient_id, seq FROM messages WHERE received_at < ? LIMIT ?)"
                " RETURNING recipient_id, length(body)",
                (cutoff, _EXPIRE_CHUNK),
            ).fetchall()
            for rid, size in rows:
                self._report((_ADJUST, bytes(rid), -1, -size, True))
            return len(rows)

        total = 0
        while True:
            n: int = await self._submit(op)
            total += n
            if n < _EXPIRE_CHUNK:
                return total

    async def touch_queues(self, recipient_ids: Iterable[bytes], now: int) -> None:
        ids = [check_id("recipient_id", r) for r in recipient_ids]
        mark, due = self._marks.due(ids, now)
        if not due:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE queues SET last_used = ? WHERE recipient_id = ? AND last_used < ?",
                [(mark, rid, mark) for rid in due],
            )

        await self._write(op)
        self._marks.written(due, mark)

    async def expire_queues(self, now: int, limits: Limits) -> int:
        """Delete idle queues a few at a time, so puts and acks are not stalled behind it."""
        cutoff = idle_cutoff(now, limits)

        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "DELETE FROM queues WHERE recipient_id IN"
                " (SELECT recipient_id FROM queues WHERE last_used <= ? LIMIT ?)"
                " RETURNING recipient_id, msg_count, msg_bytes",
                (cutoff, _IDLE_CHUNK),
            ).fetchall()
            for rid, count, nbytes in rows:
                self._report((_ADJUST, bytes(rid), -count, -nbytes, True))
                self._report((_GONE, bytes(rid), None, None, True))
            return len(rows)

        total = 0
        while True:
            n: int = await self._submit(op)
            total += n
            if n < _IDLE_CHUNK:
                return total

    # ------------------------------------------------------------------ hints and metrics

    async def watch(self, recipient_id: bytes) -> None:
        """Register interest locally; see :meth:`kith.relay.store.memory.MemoryStore.watch`."""
        if not self._running:
            raise StoreUnavailable("store is not running")
        self._watchers.add(check_id("recipient_id", recipient_id))

    async def unwatch(self, recipient_id: bytes) -> None:
        if not self._running:
            raise StoreUnavailable("store is not running")
        self._watchers.remove(check_id("recipient_id", recipient_id))

    def counters(self) -> dict[str, int]:
        """Staged messages acknowledged before they were due (never written), and written."""
        return {"staged_never_written": self._elided, "staged_written": self._written}

    async def stats(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            q, m, b = conn.execute(
                "SELECT count(*), coalesce(sum(msg_count), 0), coalesce(sum(msg_bytes), 0)"
                " FROM queues"
            ).fetchone()
            return {"queues": q, "messages": m, "bytes": b}

        return await self._read(op)


#: Errors that say a value could not be bound, not that the database is failing.
_BIND_ERRORS: Final = (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError)

_INSERT_SQL: Final = (
    "INSERT INTO messages (recipient_id, seq, msg_id, received_at, body) VALUES (?, ?, ?, ?, ?)"
)


def _row(put: _Put) -> tuple[bytes, int, bytes, int, bytes]:
    ref = put.ref
    assert ref is not None  # noqa: S101 -- set when staged; only staged puts are written
    return (ref.recipient_id, ref.seq, put.mid, put.now, put.body)


def _dropped(put: _Put) -> _Event:
    """The event for a staged put that will not be written after all (it failed): its queue
    and the store hold it no longer."""
    ref = put.ref
    assert ref is not None  # noqa: S101 -- set when staged
    return (_ADJUST, ref.recipient_id, -1, -len(put.body), False)


def _released(lease: _Lease) -> tuple[bytes, int]:
    return (lease.rid, lease.last_seq)


def _failed_job(job: object, fut: asyncio.Future[Any] | None, err: Exception) -> list[_Event]:
    """The events that answer a job nobody will run (the writer failed) with ``err``."""
    if type(job) is _Write:
        puts, job.done = job.puts[job.done :], len(job.puts)
        return [e for put in puts for e in ((_SETTLE, put.fut, False, err, True), _dropped(put))]
    if type(job) is _Grant:
        return [(_GRANT, job.sid, err, None, True)]
    return [] if fut is None else [(_SETTLE, fut, False, err, True)]


def _fail(fut: asyncio.Future[Any], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _exists(conn: sqlite3.Connection, rid: bytes) -> bool:
    row = conn.execute("SELECT 1 FROM queues WHERE recipient_id = ?", (rid,)).fetchone()
    return row is not None


_RECORD_SQL: Final = {
    "recipient_id": "SELECT recipient_id, sender_id, recipient_key, sender_key FROM queues"
    " WHERE recipient_id = ?",
    "sender_id": "SELECT recipient_id, sender_id, recipient_key, sender_key FROM queues"
    " WHERE sender_id = ?",
}


def _record(conn: sqlite3.Connection, column: str, value: bytes) -> QueueRecord | None:
    row = conn.execute(_RECORD_SQL[column], (value,)).fetchone()
    if row is None:
        return None
    rid, sid, rkey, skey = row
    return QueueRecord(bytes(rid), bytes(sid), bytes(rkey), None if skey is None else bytes(skey))
