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
A put is not written at once. The writer checks it as the insert would (queue, sender key,
quota counting the staged messages too), gives it the queue's next seq, and *stages* it in
memory; the ``accepted`` callback then tells the relay, which pushes the message to a local
subscriber immediately. The staged message is written when it is due: ``stage_seconds`` old,
staged in an earlier cycle, and with the job queue drained (an ACK for it might be waiting
otherwise). At most :data:`_STAGE_MAX` messages are staged and none waits more than
:data:`_STAGE_MAX_AGE` past its due time. If the recipient's ACK arrives first, the message is
never written, and both the put and the ack complete then: the put's caller learns that the
message was delivered and acknowledged, which is at least as final as durable. A put
completes (the sender's OK) only once its message is committed or acknowledged, so a crash
loses only puts that were never answered, and the sender sends those again.

Because a message acknowledged while staged is never inserted, the insert trigger never
records its seq in ``queues.last_seq``. The writer keeps a *view* per queue it has staged for,
whose ``last_seq`` is the authority while it exists, and writes it back before dropping the
view (when there are more than :data:`_VIEW_MAX` views, and on close). A crash loses the
views; the seqs of messages acknowledged while staged may then be handed out again, which is
harmless: a seq orders one queue's messages for the connections of one relay process, a crash
ends them all, and no row holds such a seq.

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

#: Most messages held in memory at once; past this the oldest are written at the next commit.
_STAGE_MAX: Final = 8192

#: Seconds past its due time after which a staged message is written even while the writer
#: is behind.
_STAGE_MAX_AGE: Final = 1.0

#: Accepted puts handed to the event loop at a time while a cycle is still staging.
_ACCEPT_CHUNK: Final = 256

#: Queue views the writer keeps (see "Staging"); past this the idle ones are written back.
_VIEW_MAX: Final = 65_536

_Op = Callable[[sqlite3.Connection], Any]
_STOP: Final = object()


@dataclass(slots=True, eq=False)
class _Put:
    """A put on its way through the writer: validated and numbered when staged, written when
    due, or never written if its ACK arrives first."""

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
    due: float = 0.0
    cycle: int = 0


@dataclass(slots=True, eq=False)
class _Ack:
    rid: bytes
    mid: bytes


@dataclass(slots=True, eq=False)
class _View:
    """The writer's view of a queue that has staged messages: the last seq handed out, the
    staged messages' count and bytes, and the last_seq the open transaction has written."""

    last_seq: int
    count: int
    nbytes: int
    written_seq: int


#: One future's outcome: (future, ok, value or exception, needs the commit). An outcome that
#: needs the commit becomes StoreUnavailable if the transaction fails.
_Settle = tuple["asyncio.Future[Any]", bool, Any, bool]


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
        # Writer-thread state (see "Staging"): staged puts in staging order, by (queue, id).
        self._staged: OrderedDict[tuple[bytes, bytes], _Put] = OrderedDict()
        self._views: dict[bytes, _View] = {}
        self._settle: list[_Settle] = []
        self._gone: list[bytes] = []  # queues deleted in this cycle: views dropped on commit
        self._cycles = 0
        self._backoff = 0.0
        # Bytes of messages held, for the store-wide cap: the committed total (None: unknown,
        # counted again from the queues table when next needed) and the staged total.
        self._total: int | None = None
        self._staged_bytes = 0
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
        """Finish every write already queued, then release files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        self._watchers.clear()
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

    def _enqueue(self, job: object, fut: asyncio.Future[Any]) -> None:
        self._ops.put((job, fut))
        if self._dead and not fut.done():
            # The writer died after it drained the queue: nobody will take this job.
            fut.set_exception(StoreUnavailable("store writer stopped"))

    def _writer_main(self, conn: sqlite3.Connection) -> None:
        jobs: list[tuple[object, asyncio.Future[Any]]] = []
        try:
            while True:
                timeout = None
                if self._staged:
                    first = next(iter(self._staged.values()))
                    timeout = max(0.0, first.due - time.monotonic())
                try:
                    item = self._ops.get(timeout=timeout)
                except queue.Empty:
                    item = None
                stop = item is _STOP
                if item is not None and not stop:
                    jobs.append(item)  # type: ignore[arg-type]
                drained = False
                while not stop and len(jobs) < self._batch_max:
                    try:
                        item = self._ops.get_nowait()
                    except queue.Empty:
                        drained = True
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        jobs.append(item)  # type: ignore[arg-type]
                self._cycle(conn, jobs, flush_all=stop, drained=drained)
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
            waiting = [fut for _, fut in jobs] + [put.fut for put in self._staged.values()]
            waiting += [fut for fut, *_ in self._settle]
            self._staged.clear()
            self._post(_settle_all, [(fut, False, err, True) for fut in waiting])
            raise

    def _cycle(
        self, conn: sqlite3.Connection, jobs: Sequence[tuple[object, asyncio.Future[Any]]],
        *, flush_all: bool, drained: bool = True,
    ) -> None:
        """One transaction: stage or run ``jobs`` in order, write the staged puts that are due,
        commit, then resolve every future this cycle settled (after the commit)."""
        if not jobs and not self._due(flush_all) and not (flush_all and self._views):
            return
        settle: list[_Settle] = []
        self._settle = settle
        self._gone = []
        self._cycles += 1
        accepts: list[tuple[AcceptFn, StoredRef]] = []
        done = 0  # jobs fully handled (each one settled or staged)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut in jobs:
                if type(op) is _Put:
                    self._stage(conn, op, fut, accepts)
                    if len(accepts) >= _ACCEPT_CHUNK:  # let deliveries start during a long cycle
                        self._post(_accept_all, accepts)
                        accepts = []
                elif type(op) is _Ack:
                    self._ack(conn, op, fut)
                else:
                    self._run_op(conn, op, fut)  # type: ignore[arg-type]
                done += 1
            if accepts:
                # Staged messages may be pushed to their subscribers now, before the commit.
                self._post(_accept_all, accepts)
                accepts = []
            self._flush(conn, flush_all, drained)
            synced = self._sync_views(conn, flush_all)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 -- SQLite failed (or a bug): fail the cycle, not the writer
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            err = _unavailable(exc)
            # Everything that needed this transaction fails; so does every job not yet handled.
            # Puts staged earlier in the cycle stay staged: nothing of them was written.
            settle[:] = [
                (f, False, err, True) if durable else (f, ok, v, durable)
                for f, ok, v, durable in settle
            ]
            settle.extend((fut, False, err, True) for _, fut in jobs[done:])
            # Staged puts that are due would have been written in this cycle: they fail with
            # it, now, rather than one per retry while the database keeps failing.
            now = time.monotonic()
            for key in [k for k, put in self._staged.items() if put.due <= now]:
                failed = self._unstage(key)
                if failed is not None:
                    settle.append((failed.fut, False, err, True))
            if accepts:
                self._post(_accept_all, accepts)
            for view in self._views.values():
                view.written_seq = -1  # unknown after a rollback: written again next time
            self._total = None
            self._backoff = min(1.0, max(0.05, self._backoff * 2))
        else:
            for rid in synced + self._gone:
                self._views.pop(rid, None)
            self._backoff = 0.0
        if settle:
            self._post(_settle_all, settle)
        if self._backoff:
            time.sleep(self._backoff)  # the database is failing: do not spin on it

    def _due(self, flush_all: bool) -> bool:
        if not self._staged:
            return False
        if flush_all or len(self._staged) > _STAGE_MAX:
            return True
        return next(iter(self._staged.values())).due <= time.monotonic()

    def _post(self, fn: Callable[[list[Any]], None], items: list[Any]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(fn, items)

    def _run_op(self, conn: sqlite3.Connection, op: _Op, fut: asyncio.Future[Any]) -> None:
        """Run one ordinary op inside a savepoint, so an op that fails undoes only itself."""
        conn.execute("SAVEPOINT op")
        try:
            value = op(conn)
        except StoreError as exc:  # refused before writing: the batch goes on
            conn.execute("RELEASE op")
            self._settle.append((fut, False, exc, False))
        except sqlite3.OperationalError:
            raise  # the database itself is failing: the whole cycle fails
        except Exception as exc:  # noqa: BLE001 -- a bug in one op must not sink the others
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._total = None  # the op may have counted a change it then undid
            self._settle.append((fut, False, exc, False))
        else:
            conn.execute("RELEASE op")
            self._settle.append((fut, True, value, True))

    # ------------------------------------------------------------------ staging

    def _stage(
        self,
        conn: sqlite3.Connection,
        put: _Put,
        fut: asyncio.Future[Any],
        accepts: list[tuple[AcceptFn, StoredRef]],
    ) -> None:
        """Check a put against its queue (as the insert would) and give it the next seq; it
        is written when due. A refusal is settled at once and nothing is staged."""
        put.fut = fut
        row = conn.execute(
            "SELECT recipient_id, sender_key, last_seq, msg_count, msg_bytes"
            " FROM queues WHERE sender_id = ?",
            (put.sid,),
        ).fetchone()
        refusal: StoreError | None = None
        if row is None:
            refusal = NoQueue("no such queue")
        else:
            rid, skey, last_seq, count, nbytes = bytes(row[0]), row[1], row[2], row[3], row[4]
            view = self._views.get(rid)
            if view is not None:
                last_seq, count, nbytes = view.last_seq, count + view.count, nbytes + view.nbytes
            size = len(put.body)
            if skey is not None and put.sender_key != bytes(skey):
                refusal = NotAuthorized("queue is secured")
            elif count + 1 > put.max_messages or nbytes + size > put.max_bytes:
                refusal = QuotaExceeded("queue is full")
            elif put.max_store_bytes and (
                self._committed_bytes(conn) + self._staged_bytes + size > put.max_store_bytes
            ):
                refusal = QuotaExceeded("relay store is full")
            elif (rid, put.mid) in self._staged:
                # (An id already written is refused by the insert's UNIQUE constraint.)
                refusal = DuplicateId("message id already in this queue")
        if refusal is not None:
            self._settle.append((fut, False, refusal, False))
            return
        if view is None:
            view = self._views[rid] = _View(last_seq, 0, 0, last_seq)
        view.last_seq = seq = last_seq + 1
        view.count += 1
        view.nbytes += size
        self._staged_bytes += size
        put.ref = StoredRef(rid, seq, put.now)
        put.due = time.monotonic() + self._stage_seconds
        put.cycle = self._cycles
        self._staged[(rid, put.mid)] = put
        if put.accepted is not None:
            accepts.append((put.accepted, put.ref))

    def _unstage(self, key: tuple[bytes, bytes]) -> _Put | None:
        put = self._staged.pop(key, None)
        if put is not None:
            view = self._views[key[0]]
            view.count -= 1
            view.nbytes -= len(put.body)
            self._staged_bytes -= len(put.body)
        return put

    def _committed_bytes(self, conn: sqlite3.Connection) -> int:
        if self._total is None:
            self._total = int(
                conn.execute("SELECT coalesce(sum(msg_bytes), 0) FROM queues").fetchone()[0]
            )
        return self._total

    def _count_bytes(self, delta: int) -> None:
        if self._total is not None:
            self._total += delta

    def _ack(self, conn: sqlite3.Connection, ack: _Ack, fut: asyncio.Future[Any]) -> None:
        put = self._unstage((ack.rid, ack.mid))
        if put is not None:
            # Acknowledged before it was written: it never will be. The sender's put is done
            # (its message was delivered and acknowledged), and so is this ACK.
            self._settle.append((put.fut, True, put.ref, False))
            self._settle.append((fut, True, True, False))
            self._elided += 1
            return
        row = conn.execute(
            "DELETE FROM messages WHERE recipient_id = ? AND msg_id = ? RETURNING length(body)",
            (ack.rid, ack.mid),
        ).fetchone()
        if row is not None:
            self._count_bytes(-row[0])
            self._settle.append((fut, True, True, True))
        elif not _exists(conn, ack.rid):
            self._settle.append((fut, False, NoQueue("no such queue"), False))
        else:
            self._settle.append((fut, True, False, True))

    def _drop_staged_queue(self, rid: bytes) -> None:
        """The queue is being deleted: its staged messages go with it (their puts succeeded,
        as if written and then deleted with the queue)."""
        for key in [k for k in self._staged if k[0] == rid]:
            put = self._unstage(key)
            if put is not None:
                self._settle.append((put.fut, True, put.ref, True))
        self._gone.append(rid)  # the view goes after the commit: a rollback keeps the queue

    def _flush(self, conn: sqlite3.Connection, flush_all: bool, drained: bool) -> None:
        """Write the staged puts that are due (all of them when stopping), oldest first.

        Due means: held for ``stage_seconds``, staged in an earlier cycle (however long this
        one took, the recipient cannot have acknowledged a message before it was offered for
        delivery), and every job queued before this cycle began has been taken (``drained``:
        an ACK for it may still be waiting in the queue otherwise). When the writer is behind,
        staged messages therefore wait, more of them are acknowledged first, and the writer
        catches up; :data:`_STAGE_MAX` and :data:`_STAGE_MAX_AGE` bound the wait."""
        now = time.monotonic()
        staged = self._staged
        cycle = self._cycles
        while staged:
            rid, mid = key = next(iter(staged))
            put = staged[key]
            if not (
                flush_all
                or len(staged) > _STAGE_MAX
                or put.due + _STAGE_MAX_AGE <= now
                or (drained and put.due <= now and put.cycle != cycle)
            ):
                return
            self._unstage(key)
            ref = put.ref
            assert ref is not None  # noqa: S101 -- set when staged
            try:
                conn.execute(
                    "INSERT INTO messages (recipient_id, seq, msg_id, received_at, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (rid, ref.seq, mid, put.now, put.body),
                )
            except sqlite3.IntegrityError as exc:
                # The queue went (deleted or expired after the put was staged), or an id
                # collided: this put fails; nothing was written.
                err: StoreError = (
                    DuplicateId("message id already in this queue")
                    if "msg_id" in str(exc)
                    else NoQueue("no such queue")
                )
                self._settle.append((put.fut, False, err, False))
                continue
            except sqlite3.Error as exc:
                # The database is failing (disk full, I/O): this put fails with the cycle.
                self._settle.append((put.fut, False, _unavailable(exc), True))
                raise
            except Exception as exc:  # noqa: BLE001 -- a value SQLite cannot bind: this put only
                self._settle.append((put.fut, False, exc, False))
                continue
            self._views[rid].written_seq = ref.seq
            self._written += 1
            self._count_bytes(len(put.body))
            self._settle.append((put.fut, True, ref, True))

    def _sync_views(self, conn: sqlite3.Connection, flush_all: bool) -> list[bytes]:
        """Write back the views of queues with nothing staged, when there are too many of
        them or the store is closing: ``queues.last_seq`` must cover every seq handed out,
        because a message acknowledged while staged is never inserted. Returns those queues;
        their views are dropped after the commit.

        Until then the view is the authority for the queue's last seq, so an idle view costs
        no write per message. A crash loses the views, and seqs of messages acknowledged
        while staged may then be handed out again: harmless, because a seq orders one
        queue's messages for the connections of one relay process, and a crash ends them
        all (no row and no subscription holds such a seq)."""
        if not flush_all and len(self._views) <= _VIEW_MAX:
            return []
        done = [rid for rid, view in self._views.items() if view.count == 0]
        for rid in done:
            view = self._views[rid]
            if view.written_seq != view.last_seq:
                conn.execute(
                    "UPDATE queues SET last_seq = ? WHERE recipient_id = ? AND last_seq < ?",
                    (view.last_seq, rid, view.last_seq),
                )
                view.written_seq = view.last_seq
        return done

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

        await self._write(op)

    async def delete_queue(self, recipient_id: bytes) -> None:
        rid = check_id("recipient_id", recipient_id)

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "DELETE FROM queues WHERE recipient_id = ? RETURNING msg_bytes", (rid,)
            ).fetchone()
            if row is None:
                raise NoQueue("no such queue")
            self._count_bytes(-row[0])
            self._drop_staged_queue(rid)

        await self._write(op)

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
        if not self._running or self._loop is None:
            raise StoreUnavailable("store is not running")
        fut: asyncio.Future[StoredRef] = self._loop.create_future()
        put = _Put(sid, mid, data, now, limits.max_messages, limits.max_bytes,
                   limits.max_store_bytes, sender_key, accepted, fut)
        self._enqueue(put, fut)
        fut.add_done_callback(self._put_done)
        return fut

    def _put_done(self, fut: asyncio.Future[StoredRef]) -> None:
        # Registered before the caller's own callbacks, so the hint (one turn later) follows
        # them (see hint_after_caller).
        if fut.cancelled() or fut.exception() is not None:
            return
        ref = fut.result()
        if ref.recipient_id in self._watchers and self._loop is not None:
            self._loop.call_soon(self._hint, ref.recipient_id, ref.seq)

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
        if not self._running or self._loop is None:
            raise StoreUnavailable("store is not running")
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._enqueue(_Ack(rid, mid), fut)
        return fut

    async def expire(self, now: int, limits: Limits) -> int:
        """Delete expired messages in chunks, so puts and acks are not stalled behind it."""
        cutoff = expiry_cutoff(now, limits)

        def op(conn: sqlite3.Connection) -> int:
            sizes = conn.execute(
                "DELETE FROM messages WHERE (recipient_id, seq) IN"
                " (SELECT recipient_id, seq FROM messages WHERE received_at < ? LIMIT ?)"
                " RETURNING length(body)",
                (cutoff, _EXPIRE_CHUNK),
            ).fetchall()
            self._count_bytes(-sum(n for (n,) in sizes))
            return len(sizes)

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
            sizes = conn.execute(
                "DELETE FROM queues WHERE recipient_id IN"
                " (SELECT recipient_id FROM queues WHERE last_used <= ? LIMIT ?)"
                " RETURNING msg_bytes",
                (cutoff, _IDLE_CHUNK),
            ).fetchall()
            self._count_bytes(-sum(n for (n,) in sizes))
            return len(sizes)

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


def _settle_all(settle: list[_Settle]) -> None:
    for fut, ok, value, _ in settle:
        if fut.done():  # the caller was cancelled; the op still ran (or not) as committed
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _accept_all(accepts: list[tuple[AcceptFn, StoredRef]]) -> None:
    for accepted, ref in accepts:
        try:
            accepted(ref)
        except Exception:
            log.exception("accept callback failed")


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
