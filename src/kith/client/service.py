"""The client service: one profile, its contacts and messages, driven by every interface.

Interfaces (the ``kith`` command, later the TUI) build a :class:`ClientService` with
:meth:`ClientService.create` or :meth:`ClientService.unlock`, call its methods, and subscribe to
its :meth:`~ClientService.events`. They never touch a socket, a key or the database. The design
and its reasons are in docs/client.md.

Two ways to run:

- **long-running** (``kith listen``, ``kith chat``): :meth:`~ClientService.start` subscribes
  every inbox, and background tasks receive, flush the outbox and delete expired messages until
  :meth:`~ClientService.lock`;
- **one-shot** (every other command): :meth:`~ClientService.sync` connects, sends what waits in
  the outbox, receives what the relays hold, and returns.

Both are cheap to start: unlocking costs one Argon2id run (on a worker thread) and opens no
connection; relays are contacted on first use.

Reliability, in one paragraph (details in docs/client.md): every change of a channel is
committed to the vault together with what it produced (the received message, the block to
send) *before* anything leaves the process: a block goes to the relay only from the outbox,
and a relay message is acknowledged only after its effects are committed. A crash at any point
therefore either repeats a step whose duplicate the protocol drops (a resent block fails the
peer's replay window; a redelivered block fails ours) or loses nothing. Messages are unique per
(contact, direction, message id) in the vault, so a person sees each exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from kith.client.errors import (
    ContactNameTaken,
    ContactUnavailable,
    ExpiredInvitation,
    InvalidContactName,
    InvalidInvitation,
    InvalidRelayAddress,
    InvalidSetting,
    MessageTooLong,
    MoveInProgress,
    NoSuchContact,
    OwnInvitation,
    ProfileCorrupt,
    ProfileLocked,
    SafetyNumberMismatch,
    UsedInvitation,
)
from kith.client.events import (
    ConnectionChanged,
    ContactAdded,
    ContactConfirmed,
    ContactFailed,
    ContactForgotten,
    ContactMoved,
    ContactVerified,
    Event,
    KeyChanged,
    MessageReceived,
    MessagesExpired,
    MessageStateChanged,
    SubscriptionTakenOver,
)
from kith.client.model import (
    ContactInfo,
    ContactState,
    InvitationInfo,
    MessageInfo,
    MessageState,
    SyncResult,
    from_ms,
)
from kith.client.relay import RelayError, RelayRefused
from kith.client.store import (
    SETTING_DEFAULT_DISAPPEAR,
    SETTING_RELAY,
    ClientStore,
    ClientStoreCorrupt,
    ContactRow,
    NewMessage,
    NewOutbox,
    OutboxKind,
    OutboxRow,
    QueueKind,
    QueueRow,
)
from kith.client.transport import SUB_PIPELINE, Backoff, ConnectionState, RelayPool
from kith.crypto.kdf import Argon2idParams
from kith.crypto.olm import CRYPTO
from kith.crypto.signing import SigningKey
from kith.crypto.sqlstore import SqlStoreError
from kith.errors import DecryptError, KithError, LocalProtocolError
from kith.protocol import relay as rp
from kith.protocol.envelope import MessageType
from kith.protocol.invitation import (
    MAX_TTL_MS,
    Invitation,
    InvitationError,
    InvitationExpired,
    InvitationUsed,
)
from kith.protocol.pairwise import (
    SEED_LEN,
    Channel,
    Confirmed,
    Delivered,
    InboxMoved,
    InboxQueue,
    PeerMoved,
    PendingInvitation,
    Received,
    ResendRequested,
    SecureInbox,
    SendBlock,
    accept_invitation,
    create_invitation,
)
from kith.protocol.pairwise import Event as ChannelEvent
from kith.protocol.safety import QR_PREFIX, ContactVerification, SafetyNumber
from kith.vault import UnlockedVault, Vault, VaultCorrupt

log = logging.getLogger("kith.client")

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
#: A contact named by its alias or local id, or a snapshot of it.
ContactRef = str | ContactInfo
T = TypeVar("T")

DAY: Final = 86400
#: Disappearing messages are on by default: a seized phone should hold at most a week.
DEFAULT_DISAPPEARING_SECONDS: Final = 7 * DAY
#: Shortest and longest timer a person may choose (None turns it off).
MIN_DISAPPEARING_SECONDS: Final = 10
MAX_DISAPPEARING_SECONDS: Final = 366 * DAY
#: How long a new invitation stays valid unless asked otherwise (the protocol allows 30 days).
DEFAULT_INVITATION_TTL: Final = 7 * DAY
MAX_NAME_LEN: Final = 64
CONTACT_ID_BYTES: Final = 8
MAX_MESSAGES_LIMIT: Final = 10_000
MAX_SYNC_PASSES: Final = 8
#: A queue to retire or delete whose relay stays unreachable this long is given up on (the
#: relay expires what it holds after 21 days by default; trying forever would slow every sync).
RETIRE_GIVE_UP_MS: Final = 7 * DAY * 1000

#: Relay refusals after which a block can never be accepted: the queue is gone or secured
#: against us, or the relay's block size no longer fits the block.
_PERMANENT: Final = frozenset({rp.ErrorCode.AUTH, rp.ErrorCode.BLOCK_SIZE, rp.ErrorCode.MALFORMED})


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timings. The defaults suit a person over Tor; tests shorten them."""

    #: Longest wait for a relay connection before a command fails with RelayUnreachable.
    connect_timeout: float = 15.0
    #: Reconnect and outbox-retry delays.
    backoff: Backoff = field(default_factory=Backoff)
    #: sync(): once subscribed, the relays are taken to hold nothing more after this long
    #: without a message (the relay protocol has no "queue empty" signal).
    settle: float = 1.0
    #: A gap in a contact's numbering older than this is a lost message: ask for it again.
    gap_grace: float = 5.0
    #: Longest sleep of the background sweeper between looks for expired messages.
    sweep_interval: float = 60.0
    #: accept_invitation(): how long to try delivering the acceptance before leaving it to
    #: the outbox (the contact is then PENDING and the acceptance goes out on the next sync).
    accept_timeout: float = 10.0


class EventStream(AsyncIterator[Event]):
    """One subscriber's view of the service's events, from the moment it was created.

    Unbounded on purpose: a subscriber must see every event (a UI that misses a
    MessageReceived shows a stale conversation). It ends when the service locks or when
    :meth:`close` is called.
    """

    __slots__ = ("_closed", "_queue", "_service")

    def __init__(self, service: ClientService) -> None:
        self._service = service
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._closed = False

    def _put(self, event: Event | None) -> None:
        if not self._closed:
            self._queue.put_nowait(event)
            if event is None:
                self._closed = True

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # every later call ends too
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (TimeoutError)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def close(self) -> None:
        self._service._unsubscribe(self)
        self._put(None)


def _check_relay_url(url: object) -> str:
    """ws:// or wss:// with a host, printable ASCII, at most 255 bytes (the invitation limit)."""
    if not isinstance(url, str) or not url or len(url) > 255 or not url.isascii():
        raise InvalidRelayAddress
    if any(not 0x21 <= ord(c) <= 0x7E for c in url):
        raise InvalidRelayAddress
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRelayAddress from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == 0:
        raise InvalidRelayAddress
    return url


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidContactName("a contact name must be text")
    clean = unicodedata.normalize("NFC", name.strip())
    if not clean:
        raise InvalidContactName("a contact name must not be empty")
    if len(clean) > MAX_NAME_LEN:
        raise InvalidContactName(f"a contact name must be at most {MAX_NAME_LEN} characters")
    # Category C: control, format (bidirectional overrides that disguise a name), unassigned.
    if any(unicodedata.category(ch).startswith("C") for ch in clean):
        raise InvalidContactName("a contact name must not contain control characters")
    return clean


def _check_timer(seconds: object) -> int | None:
    if seconds is None:
        return None
    if (
        not isinstance(seconds, int)
        or isinstance(seconds, bool)
        or not MIN_DISAPPEARING_SECONDS <= seconds <= MAX_DISAPPEARING_SECONDS
    ):
        raise InvalidSetting(
            f"disappearing timer must be {MIN_DISAPPEARING_SECONDS}..{MAX_DISAPPEARING_SECONDS}"
            " seconds, or off"
        )
    return seconds


def _default_name(store: ClientStore) -> str:
    n = 1
    while store.name_taken(f"contact-{n}"):
        n += 1
    return f"contact-{n}"


class ClientService:
    """One unlocked profile. Create with :meth:`create` or :meth:`unlock`; finish with
    :meth:`lock` (or ``async with``).

    Every method raises :class:`~kith.client.errors.ProfileLocked` once locked. Methods that
    name a contact take its alias, its local id, or a :class:`ContactInfo`.
    """

    def __init__(
        self,
        vault: UnlockedVault,
        store: ClientStore,
        executor: ThreadPoolExecutor,
        *,
        relay_url: str,
        default_disappear: int | None,
        proxy: str | None,
        clock: Clock,
        rng: RandomBytes,
        options: ClientOptions,
    ) -> None:
        """Private: use :meth:`create` or :meth:`unlock`."""
        self._vault = vault
        self._store = store
        self._executor = executor
        self._pickle_key = vault.pickle_key
        self._relay_url = relay_url
        self._default_disappear = default_disappear
        self._clock = clock
        self._rng = rng
        self._options = options
        self._proxy = proxy
        self._pool = self._new_pool()
        self._locked = False
        self._running = False
        self._stats: Counter[str] = Counter()
        self._queues: dict[tuple[str, bytes], QueueRow] = {}
        self._channels: dict[str, Channel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._relay_locks: dict[str, asyncio.Lock] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._gap_timers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._acks: set[asyncio.Task[Any]] = set()  # ACKs sent, answers not yet in
        self._streams: set[EventStream] = set()
        self._inflight = 0
        self._activity = asyncio.Event()
        self._last_rx: dict[tuple[str, bytes], float] = {}
        self._connected_at: dict[str, float] = {}
        self._move_resent: set[str] = set()
        self._moves_repeated: set[str] = set()
        self._retirer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: str,
        *,
        params: Argon2idParams,
        relay_url: str,
        proxy: str | None = None,
        clock: Clock = time.time,
        rng: RandomBytes = os.urandom,
        allow_insecure_params_for_tests: bool = False,
        options: ClientOptions | None = None,
    ) -> ClientService:
        """Create a new profile (a vault at ``path``) and return it unlocked.

        ``params``: normally :func:`kith.vault.params.calibrate()`. ``relay_url``: the relay
        this profile creates its queues on (ws:// or wss://; a .onion address with ``proxy``).
        ``proxy``: a SOCKS5 URL such as ``socks5h://127.0.0.1:9050`` (Tor) used for every
        relay connection. ``clock`` returns Unix seconds; ``rng(n)`` returns n random bytes.
        No connection is opened.
        """
        relay_url = _check_relay_url(relay_url)
        vault = await asyncio.to_thread(
            Vault.create,
            path,
            passphrase,
            params,
            rng,
            allow_insecure_params_for_tests=allow_insecure_params_for_tests,
        )
        return await cls._open(
            vault, proxy, clock, rng, options or ClientOptions(), new_relay=relay_url
        )

    @classmethod
    async def unlock(
        cls,
        path: str | os.PathLike[str],
        passphrase: str,
        *,
        proxy: str | None = None,
        clock: Clock = time.time,
        rng: RandomBytes = os.urandom,
        options: ClientOptions | None = None,
    ) -> ClientService:
        """Open an existing profile. Raises :class:`~kith.vault.WrongPassphrase` (and nothing
        more specific) for a passphrase that opens nothing, :class:`ProfileCorrupt` for damaged
        files. Expired messages are deleted before this returns. No connection is opened."""
        try:
            vault = await asyncio.to_thread(Vault.unlock, path, passphrase)
        except (VaultCorrupt, SqlStoreError, DecryptError):
            raise ProfileCorrupt from None
        return await cls._open(vault, proxy, clock, rng, options or ClientOptions())

    @classmethod
    async def _open(
        cls,
        vault: UnlockedVault,
        proxy: str | None,
        clock: Clock,
        rng: RandomBytes,
        options: ClientOptions,
        *,
        new_relay: str | None = None,
    ) -> ClientService:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kith-vault")
        loop = asyncio.get_running_loop()

        def load() -> tuple[ClientStore, str, int | None, list[QueueRow]]:
            store = ClientStore(vault.db.raw)
            if new_relay is not None:
                with store.transaction():
                    store.put_setting(SETTING_RELAY, new_relay)
                    store.put_setting(SETTING_DEFAULT_DISAPPEAR, DEFAULT_DISAPPEARING_SECONDS)
            relay = store.setting(SETTING_RELAY)
            if not isinstance(relay, str):
                raise ClientStoreCorrupt("the profile has no relay")
            default = store.setting(SETTING_DEFAULT_DISAPPEAR)
            if default is not None and not isinstance(default, int):
                raise ClientStoreCorrupt("bad disappearing default")
            return store, relay, default, store.queues()

        try:
            store, relay, default, queues = await loop.run_in_executor(executor, load)
        except (ClientStoreCorrupt, SqlStoreError, VaultCorrupt):
            await loop.run_in_executor(executor, vault.close)
            executor.shutdown(wait=False)
            raise ProfileCorrupt from None
        except BaseException:
            await loop.run_in_executor(executor, vault.close)
            executor.shutdown(wait=False)
            raise
        service = cls(
            vault,
            store,
            executor,
            relay_url=relay,
            default_disappear=default,
            proxy=proxy,
            clock=clock,
            rng=rng,
            options=options,
        )
        service._queues = {(q.relay, q.recipient_id): q for q in queues}
        try:
            await service.sweep()
        except (ClientStoreCorrupt, SqlStoreError):
            await service.lock()
            raise ProfileCorrupt from None
        except BaseException:
            await service.lock()
            raise
        return service

    async def lock(self) -> None:
        """Stop every background task, close the relay connections and the vault, and end
        every event stream. Unsent messages stay in the outbox for next time. Idempotent."""
        if self._locked:
            return
        self._locked = True
        self._running = False
        tasks = [*self._tasks, *self._workers.values(), *self._gap_timers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pool.close()
        self._channels.clear()
        # The single vault thread runs jobs in order: this closes the database only after any
        # job a cancelled task had already handed to it.
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._vault.close)
        finally:
            self._executor.shutdown(wait=False)
            for stream in list(self._streams):
                stream._put(None)
            self._streams.clear()

    async def __aenter__(self) -> ClientService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.lock()

    @property
    def locked(self) -> bool:
        return self._locked

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`lock`."""
        return self._running

    @property
    def relay_url(self) -> str:
        """The relay new queues are created on (invitations, acceptances)."""
        return self._relay_url

    async def set_relay(self, relay_url: str) -> None:
        """Change the relay new queues are created on. Existing contacts stay where they are
        (move them with :meth:`rotate`)."""
        url = _check_relay_url(relay_url)
        await self._db(lambda: self._store.put_setting(SETTING_RELAY, url))
        self._relay_url = url

    @property
    def stats(self) -> dict[str, int]:
        """Counters since unlock (dropped blocks by reason, retries...). No content, no ids."""
        return dict(self._stats)

    async def start(self) -> None:
        """Long-running mode: subscribe every inbox and run the receiver, the outbox flusher
        and the expiry sweeper in the background until :meth:`lock`."""
        self._live()
        if self._running:
            return
        self._running = True
        await self._subscribe_many(
            [q for q in self._queues.values() if q.kind is not QueueKind.DOOMED]
        )
        await self._resend_pending_moves()
        for url in await self._relays_with_work():
            self._kick(url)
        self._spawn(self._sweeper())
        self._schedule_retire()

    async def sync(self, timeout: float = 30.0) -> SyncResult:
        """One-shot mode: connect, send the outbox, receive what the relays hold, return.

        Never raises for an unreachable relay: what could not be sent stays queued and the
        result says so. Also works while :meth:`start` is running (then it only waits for the
        outbox to drain and the inboxes to go quiet).
        """
        self._live()
        received, sent = self._stats["received"], self._stats["sent"]
        unreachable: set[str] = set()
        try:
            async with asyncio.timeout(timeout):
                await self.sweep()
                # The profile's own relay too, so the result says whether it can be reached.
                relays = {self._relay_url} | {q.relay for q in self._queues.values()}
                relays |= await self._relays_with_work()

                async def start_relay(url: str) -> None:
                    """Connect, subscribe, send: each relay at its own pace."""
                    try:
                        await self._pool.block_size(url)
                    except RelayError:
                        unreachable.add(url)
                        return
                    await self._subscribe_many([
                        q for q in self._queues.values()
                        if q.relay == url and q.kind is not QueueKind.DOOMED
                    ])

                await asyncio.gather(*(start_relay(url) for url in relays))
                await self._resend_pending_moves()
                await self._pass_all(relays - unreachable, unreachable)
                await self._settle()
                await self._retire_drained(quiet=self._options.settle)
                for cid in list(self._channels):
                    await self._request_missing(cid)
                await self._pass_all(await self._relays_with_work() - unreachable, unreachable)
        except TimeoutError:
            pass
        finally:
            if not self._running and not self._locked:
                # One-shot: nothing arrives between syncs (a message handled now would be
                # neither counted nor answered until the next one). ACKs already sent get
                # a moment to be answered on the connection their messages came on.
                if self._acks:
                    await asyncio.wait(set(self._acks), timeout=self._options.settle)
                pool, self._pool = self._pool, self._new_pool()
                await pool.close()
        queued = await self._db(self._store.outbox_count)
        return SyncResult(
            received=self._stats["received"] - received,
            sent=self._stats["sent"] - sent,
            queued=queued,
            unreachable=len(unreachable),
        )

    async def sweep(self) -> int:
        """Delete expired messages and invitations now; returns how many messages went.
        (The background sweeper and :meth:`unlock` call this too.)"""
        now = self._now_ms()

        def work() -> tuple[dict[str, int], list[QueueRow]]:
            expired = self._store.expire_messages(now)
            self._store.expire_invitations(now, now + RETIRE_GIVE_UP_MS)
            abandoned = self._store.drop_abandoned(now)
            if abandoned:
                self._stats["queues_abandoned"] += abandoned
            return expired, self._store.queues()

        expired, queues = await self._db(work)
        self._queues = {(q.relay, q.recipient_id): q for q in queues}
        for cid, count in expired.items():
            self._publish(MessagesExpired(cid, count))
        for q in queues:
            if q.kind is QueueKind.DOOMED:
                self._pool.unsubscribe(q.relay, q.recipient_id)
                self._kick(q.relay)
        return sum(expired.values())

    # ------------------------------------------------------------------ invitations

    async def create_invitation(
        self, relay_url: str | None = None, ttl: float = DEFAULT_INVITATION_TTL
    ) -> InvitationInfo:
        """Make a one-time invitation (``ttl`` seconds, at most 30 days) on ``relay_url``
        (default: :attr:`relay_url`). Needs the relay: creates the queue the invitee will
        answer on.

        Whoever accepts it first becomes a contact named ``contact-N`` (rename them); a
        :class:`~kith.client.events.ContactAdded` event announces it.
        """
        self._live()
        url = self._relay_url if relay_url is None else _check_relay_url(relay_url)
        if not isinstance(ttl, int | float) or not 0 < ttl * 1000 <= MAX_TTL_MS:
            raise InvalidSetting(f"an invitation lives 1 second to {MAX_TTL_MS // 86_400_000} days")
        inbox = await self._new_inbox(url)
        now = self._now_ms()
        pending = create_invitation(
            inbox=inbox, now_ms=now, rng=self._rng, crypto=CRYPTO, ttl_ms=int(ttl * 1000)
        )
        invitation = pending.invitation
        queue = QueueRow(
            url, inbox.recipient_id, inbox.auth_seed, QueueKind.INVITATION,
            invitation.invitation_id.hex(),
        )
        blob = pending.to_bytes(self._pickle_key)

        def save() -> None:
            with self._store.transaction():
                self._store.insert_invitation(
                    invitation.invitation_id, blob, invitation.expires_at_ms
                )
                self._store.insert_queue(queue)

        await self._db(save)
        self._queues[(url, queue.recipient_id)] = queue
        if self._running:
            await self._subscribe(queue)
        return InvitationInfo(
            uri=invitation.to_uri(),
            qr_text=invitation.qr_text(),
            expires_at=from_ms(invitation.expires_at_ms),
        )

    async def accept_invitation(self, uri: str, name: str) -> ContactInfo:
        """Accept an invitation link (or scanned QR text) and save the inviter as ``name``.

        Raises InvalidInvitation, ExpiredInvitation, UsedInvitation (the inviter's relay says
        someone was first), OwnInvitation, ContactNameTaken, InvalidContactName or
        RelayUnreachable (nothing was created). Returns the contact in state PENDING until the
        inviter confirms. If the relay goes away after the contact was saved, the acceptance
        stays in the outbox and goes out on the next sync.
        """
        self._live()
        name = _check_name(name)
        invitation = self._parse_invitation(uri)
        inv_id = invitation.invitation_id

        def check() -> None:
            if self._store.invitation(inv_id) is not None:
                raise OwnInvitation
            if self._store.contact_by_invitation(inv_id) is not None:
                raise UsedInvitation
            if self._store.name_taken(name):
                raise ContactNameTaken(name)

        await self._db(check)
        inbox = await self._new_inbox(self._relay_url)
        try:
            channel, accept = accept_invitation(
                invitation, inbox=inbox, now_ms=self._now_ms(), rng=self._rng, crypto=CRYPTO
            )
        except InvitationExpired:
            await self._drop_new_queue(inbox)
            raise ExpiredInvitation from None
        except (DecryptError, KithError):
            await self._drop_new_queue(inbox)
            raise InvalidInvitation from None
        cid = self._new_contact_id()
        now = self._now_ms()
        row = ContactRow(
            cid,
            name,
            ContactState.PENDING,
            inv_id,
            channel.to_bytes(self._pickle_key),
            ContactVerification(channel.their_keys).to_bytes(),
            self._default_disappear,
            now,
        )
        queue = QueueRow(inbox.relay, inbox.recipient_id, inbox.auth_seed, QueueKind.CONTACT, cid)
        out = self._outbox_for(cid, accept, OutboxKind.ACCEPT)

        def save() -> int:
            with self._store.transaction():
                if self._store.name_taken(name):
                    raise ContactNameTaken(name)
                self._store.insert_contact(row)
                self._store.insert_queue(queue)
                return self._store.insert_outbox(out)

        try:
            outbox_id = await self._db(save)
        except BaseException:
            await self._drop_new_queue(inbox)
            raise
        self._channels[cid] = channel
        self._queues[(queue.relay, queue.recipient_id)] = queue
        if self._running:
            await self._subscribe(queue)
        refused = await self._deliver_accept(out.relay, outbox_id)
        info = await self._info_by_id(cid)
        if refused or info.state is ContactState.FAILED:
            await self._forget_now(cid, announce=False)
            raise UsedInvitation
        return info

    def _parse_invitation(self, uri: str) -> Invitation:
        try:
            invitation = Invitation.from_uri(uri)
            invitation.verify(self._now_ms(), CRYPTO)
        except InvitationExpired:
            raise ExpiredInvitation from None
        except (InvitationError, DecryptError, ValueError):
            raise InvalidInvitation from None
        return invitation

    async def _deliver_accept(self, relay: str, outbox_id: int) -> bool:
        """Send the acceptance now, so that "someone used this invitation first" (the inviter's
        relay refuses our key) answers accept_invitation() rather than arriving later as an
        event. Returns True if it was refused for good. If the relay cannot be reached the
        acceptance stays in the outbox for the worker or the next sync."""
        try:
            async with asyncio.timeout(self._options.accept_timeout):
                async with self._relay_lock(relay):
                    row = await self._db(lambda: self._store.outbox_row(outbox_id))
                    if row is not None:  # else the background worker already sent it
                        return not await self._send_row(row, announce=False)
        except (TimeoutError, RelayError):
            self._kick(relay)
        return False

    # ------------------------------------------------------------------ contacts

    async def contacts(self) -> list[ContactInfo]:
        """Every contact, by name."""
        rows = await self._db(self._store.contacts)
        return [self._info(r) for r in rows]

    async def contact(self, name_or_id: str) -> ContactInfo:
        """One contact by alias (first) or local id. Raises NoSuchContact."""
        return self._info(await self._resolve(name_or_id))

    async def rename(self, contact: ContactRef, new_name: str) -> ContactInfo:
        name = _check_name(new_name)
        row = await self._resolve(contact)

        def work() -> None:
            with self._store.transaction():
                other = self._store.contact_by_name(name)
                if other is not None and other.id != row.id:
                    raise ContactNameTaken(name)
                self._store.rename_contact(row.id, name)

        async with self._lock(row.id):
            await self._db(work)
        return await self._info_by_id(row.id)

    async def safety_number(self, contact: ContactRef) -> SafetyNumber:
        """The number to compare with the contact (``.display()``; ``.qr_payload()`` to show)."""
        row = await self._resolve(contact)
        async with self._lock(row.id):
            channel = await self._channel(row.id)
            await self._observe_keys(row.id, channel)
        return SafetyNumber.compute(channel.our_keys, channel.their_keys, CRYPTO)

    async def verify(self, contact: ContactRef, code_or_scanned_payload: str) -> ContactInfo:
        """Mark the contact verified if the digits the person typed, or the contact's QR code
        they scanned (``KITH:VERIFY/...``), match. Raises SafetyNumberMismatch otherwise, and
        KeyChangedError while a key change is unacknowledged."""
        if not isinstance(code_or_scanned_payload, str):
            raise SafetyNumberMismatch
        scanned = code_or_scanned_payload.strip().upper().startswith(QR_PREFIX)

        def check(v: ContactVerification, number: SafetyNumber) -> bool:
            if scanned:
                return v.verify_scanned(number, code_or_scanned_payload)
            return v.verify_typed(number, code_or_scanned_payload)

        return await self._verify_with(contact, check)

    async def confirm_verified(self, contact: ContactRef) -> ContactInfo:
        """The person compared both screens side by side and says the numbers are equal."""

        def check(v: ContactVerification, number: SafetyNumber) -> bool:
            v.confirm_compared(number)
            return True

        return await self._verify_with(contact, check)

    async def _verify_with(
        self, contact: ContactRef, check: Callable[[ContactVerification, SafetyNumber], bool]
    ) -> ContactInfo:
        row = await self._resolve(contact)
        async with self._lock(row.id):
            channel = await self._channel(row.id)
            await self._observe_keys(row.id, channel)
            current = await self._db(lambda: self._store.contact(row.id))
            if current is None:
                raise NoSuchContact(row.name)
            verification = ContactVerification.from_bytes(current.verification)
            number = SafetyNumber.compute(channel.our_keys, channel.their_keys, CRYPTO)
            if not check(verification, number):
                raise SafetyNumberMismatch
            blob = verification.to_bytes()
            await self._db(lambda: self._store.save_verification(row.id, blob))
        info = await self._info_by_id(row.id)
        self._publish(ContactVerified(info))
        return info

    async def acknowledge_key_change(self, contact: ContactRef) -> ContactInfo:
        """The person saw that the contact's keys changed; sending resumes, unverified."""
        row = await self._resolve(contact)
        async with self._lock(row.id):
            current = await self._db(lambda: self._store.contact(row.id))
            if current is None:
                raise NoSuchContact(row.name)
            verification = ContactVerification.from_bytes(current.verification)
            verification.acknowledge_change()
            blob = verification.to_bytes()
            await self._db(lambda: self._store.save_verification(row.id, blob))
        return await self._info_by_id(row.id)

    async def forget(self, contact: ContactRef) -> None:
        """Delete the contact: its messages, outbox and channel are wiped from the vault, and
        our inbox queue for it is deleted at the relay (now, or as soon as it is reachable)."""
        row = await self._resolve(contact)
        await self._forget_now(row.id)

    async def _forget_now(self, cid: str, *, announce: bool = True) -> None:
        """Forget, then try to delete the queues at once (else the worker or next sync will)."""
        for url in await self._forget(cid, announce=announce):
            with contextlib.suppress(TimeoutError, RelayError):
                async with asyncio.timeout(self._options.connect_timeout):
                    async with self._relay_lock(url):
                        await self._delete_doomed(url)

    async def _forget(self, cid: str, *, announce: bool = True) -> set[str]:
        give_up = self._now_ms() + RETIRE_GIVE_UP_MS
        async with self._lock(cid):
            await self._db(lambda: self._store.delete_contact(cid, give_up))
            self._channels.pop(cid, None)
            timer = self._gap_timers.pop(cid, None)
            if timer is not None:
                timer.cancel()
            doomed: set[str] = set()
            for key, q in list(self._queues.items()):
                if q.owner == cid and q.kind in (QueueKind.CONTACT, QueueKind.RETIRING):
                    self._queues[key] = replace(
                        q, kind=QueueKind.DOOMED, owner="", retire_ms=give_up
                    )
                    self._pool.unsubscribe(q.relay, q.recipient_id)
                    doomed.add(q.relay)
        if announce:
            self._publish(ContactForgotten(cid))
        for url in doomed:
            self._kick(url)
        return doomed

    async def set_disappearing(self, contact: ContactRef, seconds: int | None) -> ContactInfo:
        """Keep messages with this contact for ``seconds`` after they are stored (None: until
        deleted). Applies to new messages; a shorter timer also shortens existing ones."""
        timer = _check_timer(seconds)
        row = await self._resolve(contact)

        def work() -> None:
            with self._store.transaction():
                self._store.set_disappear(row.id, timer)
                if timer is not None:
                    self._store.shorten_expiry(row.id, timer)

        async with self._lock(row.id):
            await self._db(work)
        await self.sweep()
        return await self._info_by_id(row.id)

    async def set_default_disappearing(self, seconds: int | None) -> None:
        """The timer new contacts start with (initially 7 days)."""
        timer = _check_timer(seconds)
        await self._db(lambda: self._store.put_setting(SETTING_DEFAULT_DISAPPEAR, timer))
        self._default_disappear = timer

    # ------------------------------------------------------------------ messages

    async def send(self, contact: ContactRef, text: str) -> MessageInfo:
        """Write a message. It is in the vault's outbox when this returns (state QUEUED) and
        goes out at once in long-running mode, else on the next :meth:`sync`. Raises
        MessageTooLong, KeyChangedError, ContactUnavailable."""
        if not isinstance(text, str):
            raise TypeError("text must be str")
        if not text:
            raise InvalidSetting("an empty message is not sent")
        body = text.encode("utf-8")
        row = await self._resolve(contact)
        if row.state is ContactState.FAILED:
            raise ContactUnavailable(
                "this contact's invitation was used by someone else: nothing can be sent"
            )
        async with self._lock(row.id):
            channel = await self._channel(row.id)
            await self._observe_keys(row.id, channel)
            current = await self._db(lambda: self._store.contact(row.id))
            if current is None:
                raise NoSuchContact(row.name)
            ContactVerification.from_bytes(current.verification).require_send_allowed()
            if len(body) > channel.max_body:
                raise MessageTooLong(channel.max_body)
            now = self._now_ms()
            try:
                block = channel.send(body, now_ms=now, rng=self._rng)
                blob = channel.to_bytes(self._pickle_key)
                message = NewMessage(
                    row.id,
                    True,
                    block.header.msg_id,
                    block.header.seq,
                    MessageState.QUEUED,
                    block.header.flags,
                    text,
                    now,
                    now,
                    self._expiry(current.disappear_s, now),
                )
                out = self._outbox_for(row.id, block, OutboxKind.MESSAGE)

                def save() -> int:
                    with self._store.transaction():
                        self._store.save_channel(row.id, blob)
                        mid = self._store.insert_message(message)
                        if mid is None:
                            raise ClientStoreCorrupt("message id collision")
                        self._store.insert_outbox(out, mid)
                        return mid

                mid = await self._db(save)
            except BaseException:
                self._channels.pop(row.id, None)  # reload the committed state next time
                raise
        self._kick(out.relay)
        info = await self._db(lambda: self._store.message(mid))
        if info is None:  # expired at once: a timer shorter than the time to get here
            raise ContactUnavailable("the message expired before it was stored")
        return info

    async def messages(self, contact: ContactRef, limit: int = 50) -> list[MessageInfo]:
        """The last ``limit`` messages with the contact, oldest first."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_MESSAGES_LIMIT:
            raise InvalidSetting(f"limit must be 1..{MAX_MESSAGES_LIMIT}")
        row = await self._resolve(contact)
        return await self._db(lambda: self._store.messages(row.id, limit))

    async def mark_read(self, contact: ContactRef) -> int:
        """Mark every incoming message from the contact read; returns how many were unread."""
        row = await self._resolve(contact)
        return await self._db(lambda: self._store.mark_read(row.id))

    async def inbox(self, *, mark_read: bool = True) -> list[MessageInfo]:
        """Every unread incoming message, oldest first (and mark them read)."""

        def work() -> list[MessageInfo]:
            with self._store.transaction():
                unread = self._store.unread()
                if mark_read and unread:
                    self._store.mark_read(None, unread[-1].id)
                return unread

        return await self._db(work)

    async def rotate(self, contact: ContactRef, new_relay_url: str) -> ContactInfo:
        """Move our inbox for this contact to ``new_relay_url`` without losing messages: a new
        queue there, the contact told to send there, the old queue drained and deleted."""
        url = _check_relay_url(new_relay_url)
        row = await self._resolve(contact)
        if row.state is not ContactState.ACTIVE:
            raise ContactUnavailable("a contact can move once the invitation handshake is complete")
        async with self._lock(row.id):
            channel = await self._channel(row.id)
            if channel.pending_inbox is not None or channel.retiring_inbox is not None:
                raise MoveInProgress
        inbox = await self._new_inbox(url)
        try:
            async with self._lock(row.id):
                channel = await self._channel(row.id)
                try:
                    block = channel.move_inbox(inbox, now_ms=self._now_ms(), rng=self._rng)
                except LocalProtocolError:
                    raise MoveInProgress from None
                queue = QueueRow(
                    url, inbox.recipient_id, inbox.auth_seed, QueueKind.CONTACT, row.id
                )
                blob = channel.to_bytes(self._pickle_key)
                out = self._outbox_for(row.id, block, OutboxKind.CONTROL)

                def save() -> None:
                    with self._store.transaction():
                        self._store.save_channel(row.id, blob)
                        self._store.insert_queue(queue)
                        self._store.insert_outbox(out)

                try:
                    await self._db(save)
                except BaseException:
                    self._channels.pop(row.id, None)
                    raise
        except BaseException:
            await self._drop_new_queue(inbox)
            raise
        self._queues[(url, queue.recipient_id)] = queue
        self._moves_repeated.add(row.id)  # just sent: no need to repeat it in this session
        self._move_resent.discard(row.id)
        if self._running:
            await self._subscribe(queue)
        self._kick(out.relay)
        return await self._info_by_id(row.id)

    def events(self) -> EventStream:
        """A stream of every event published from now on (iterate with ``async for``; it
        ends when the service locks). Call ``close()`` on it when no longer listening."""
        self._live()
        stream = EventStream(self)
        self._streams.add(stream)
        return stream

    # ================================================================== internals

    def _new_pool(self) -> RelayPool:
        return RelayPool(
            self._on_message,
            on_state=self._on_state,
            on_taken_over=self._on_taken_over,
            proxy=self._proxy,
            backoff=self._options.backoff,
            connect_timeout=self._options.connect_timeout,
        )

    def _live(self) -> None:
        if self._locked:
            raise ProfileLocked

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _new_contact_id(self) -> str:
        return self._rng(CONTACT_ID_BYTES).hex()

    @staticmethod
    def _expiry(disappear_s: int | None, now_ms: int) -> int | None:
        return None if disappear_s is None else now_ms + disappear_s * 1000

    async def _db(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the vault thread (SQLCipher's fsyncs never block the event loop)."""
        self._live()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _lock(self, key: str) -> asyncio.Lock:
        """Held while a contact's channel changes and is saved: two tasks interleaving there
        could save an older ratchet over a newer one (and reuse message keys after a restart)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _relay_lock(self, url: str) -> asyncio.Lock:
        """Held while sending one relay's outbox, so rows go out once and in order."""
        lock = self._relay_locks.get(url)
        if lock is None:
            lock = self._relay_locks[url] = asyncio.Lock()
        return lock

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._locked:
            self._stats["background_errors"] += 1
            log.error("background task failed: %s", type(task.exception()).__name__)

    def _publish(self, event: Event) -> None:
        for stream in list(self._streams):
            stream._put(event)

    def _unsubscribe(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    def _info(self, row: ContactRow) -> ContactInfo:
        return row.info(ContactVerification.from_bytes(row.verification).status)

    async def _info_by_id(self, cid: str) -> ContactInfo:
        row = await self._db(lambda: self._store.contact(cid))
        if row is None:
            raise NoSuchContact(cid)
        return self._info(row)

    async def _resolve(self, ref: ContactRef) -> ContactRow:
        if isinstance(ref, ContactInfo):
            row = await self._db(lambda: self._store.contact(ref.id))
            if row is None:
                raise NoSuchContact(ref.name)
            return row
        if not isinstance(ref, str):
            raise TypeError("a contact is named by its alias, its id, or a ContactInfo")
        key = ref.strip()

        def find() -> ContactRow | None:
            return self._store.contact_by_name(
                unicodedata.normalize("NFC", key)
            ) or self._store.contact(key)

        row = await self._db(find)
        if row is None:
            raise NoSuchContact(key)
        return row

    async def _channel(self, cid: str) -> Channel:
        """The contact's channel (cached; loaded from the vault on first use)."""
        channel = self._channels.get(cid)
        if channel is not None:
            return channel
        row = await self._db(lambda: self._store.contact(cid))
        if row is None:
            raise NoSuchContact(cid)
        try:
            channel = Channel.from_bytes(row.channel, self._pickle_key, CRYPTO)
        except (DecryptError, KithError, ValueError):
            raise ProfileCorrupt("a contact's saved state is damaged") from None
        self._channels[cid] = channel
        return channel

    async def _observe_keys(self, cid: str, channel: Channel) -> None:
        """Compare the keys the channel uses with the ones the verification state knows; a
        difference is a key change: saved, announced, and sending blocked until acknowledged."""
        row = await self._db(lambda: self._store.contact(cid))
        if row is None:
            return
        verification = ContactVerification.from_bytes(row.verification)
        if verification.observe(channel.their_keys):
            blob = verification.to_bytes()
            await self._db(lambda: self._store.save_verification(cid, blob))
            self._publish(KeyChanged(await self._info_by_id(cid)))

    async def _new_inbox(self, url: str) -> InboxQueue:
        """NEW on ``url`` with a fresh recipient key: a queue for one relationship only."""
        seed = self._rng(SEED_LEN)
        rid, sid, block_size = await self._pool.create_queue(url, SigningKey(seed))
        try:
            return InboxQueue(url, rid, sid, block_size, seed)
        except (LocalProtocolError, ValueError):
            with contextlib.suppress(RelayError):
                await self._pool.delete_queue(url, rid, SigningKey(seed))
            raise InvalidRelayAddress from None

    async def _drop_new_queue(self, inbox: InboxQueue) -> None:
        with contextlib.suppress(RelayError):
            await self._pool.delete_queue(
                inbox.relay, inbox.recipient_id, SigningKey(inbox.auth_seed)
            )

    @staticmethod
    def _outbox_for(cid: str, block: SendBlock, kind: OutboxKind) -> NewOutbox:
        q = block.queue
        return NewOutbox(cid, q.relay, q.sender_id, q.auth_seed, block.block, kind)

    async def _subscribe(self, q: QueueRow) -> None:
        try:
            await self._pool.subscribe(q.relay, q.recipient_id, SigningKey(q.auth_seed))
        except RelayRefused as exc:
            if exc.code is rp.ErrorCode.AUTH:
                # The relay does not know this queue any more; nothing will ever arrive on it.
                self._pool.unsubscribe(q.relay, q.recipient_id)
                self._stats["queues_gone"] += 1
        except RelayError:
            pass  # the pool subscribes again when it reconnects

    async def _relays_with_work(self) -> set[str]:
        relays = set(await self._db(self._store.outbox_relays))
        for q in self._queues.values():
            if q.kind is QueueKind.DOOMED or (q.secure_key is not None and not q.secured):
                relays.add(q.relay)
        return relays

    # ------------------------------------------------------------------ outbound work

    def _kick(self, url: str) -> None:
        """Make sure the relay's worker runs (long-running mode only)."""
        if not self._running or self._locked:
            return
        wake = self._wake.get(url)
        if wake is None:
            wake = self._wake[url] = asyncio.Event()
        wake.set()
        task = self._workers.get(url)
        if task is None or task.done():
            self._workers[url] = asyncio.ensure_future(self._worker(url, wake))

    async def _worker(self, url: str, wake: asyncio.Event) -> None:
        """Send everything waiting for one relay; back off and retry while it fails."""
        attempt = 0
        while not self._locked:
            wake.clear()
            try:
                done = await self._relay_pass(url)
            except ProfileLocked:
                return
            except KithError as exc:
                # The vault failed under us (disk full, damage): keep the rows, try later.
                self._stats["background_errors"] += 1
                # The type only: a traceback could carry ids or names into a log.
                log.error("outbox worker failed: %s", type(exc).__name__)  # noqa: TRY400
                done = False
            if done:
                attempt = 0
                if not wake.is_set():
                    return
                continue
            self._stats["retries"] += 1
            delay = self._options.backoff.delay(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    async def _pass_all(self, relays: set[str], unreachable: set[str]) -> None:
        """sync(): passes over every reachable relay until one changes nothing more (a
        contact's later blocks on one relay may wait for its earlier ones on another)."""
        for _ in range(MAX_SYNC_PASSES):
            before = self._stats["sent"] + self._stats["refused"]

            async def one(url: str) -> None:
                try:
                    if not await self._relay_pass(url):
                        unreachable.add(url)
                except RelayError:
                    unreachable.add(url)

            await asyncio.gather(*(one(url) for url in relays - unreachable))
            if self._stats["sent"] + self._stats["refused"] == before:
                return
            relays = (relays | await self._relays_with_work()) - unreachable

    async def _relay_pass(self, url: str) -> bool:
        """One pass over a relay's pending work: secure queues, delete doomed ones, send the
        outbox in order. True if everything that may go went; False if the relay failed
        (retry later)."""
        progressed: set[str] = set()
        async with self._relay_lock(url):
            try:
                await self._secure_pending(url)
                await self._delete_doomed(url)

                def load() -> tuple[list[OutboxRow], dict[str, int]]:
                    return self._store.outbox(url), self._store.outbox_elsewhere(url)

                rows, elsewhere = await self._db(load)
                waiting: set[str] = set()
                for row in rows:
                    if row.contact_id in waiting:
                        continue
                    if elsewhere.get(row.contact_id, row.id) < row.id:
                        waiting.add(row.contact_id)  # an earlier block goes to another relay
                        continue
                    await self._send_row(row)
                    progressed.add(row.contact_id)
            except RelayError:
                return False
            finally:
                await self._kick_others(url, progressed)
        return True

    async def _kick_others(self, url: str, contacts: set[str]) -> None:
        """Wake the relays holding later blocks of contacts whose earlier blocks just went."""
        if not self._running or not contacts:
            return
        for cid in contacts:
            for other in await self._db(functools.partial(self._store.outbox_relays_of, cid)):
                if other != url:
                    self._kick(other)

    async def _secure_pending(self, url: str) -> None:
        for q in list(self._queues.values()):
            if q.relay != url or q.secure_key is None or q.secured:
                continue
            if q.kind not in (QueueKind.CONTACT, QueueKind.RETIRING):
                continue
            try:
                await self._pool.secure(url, q.recipient_id, SigningKey(q.auth_seed), q.secure_key)
            except RelayRefused as exc:
                if exc.code not in _PERMANENT:
                    raise
                self._stats["queues_gone"] += 1
            done = replace(q, secured=True)
            await self._db(functools.partial(self._store.update_queue, done))
            if self._queues.get((url, q.recipient_id)) == q:
                self._queues[(url, q.recipient_id)] = done

    async def _delete_doomed(self, url: str) -> None:
        for q in list(self._queues.values()):
            if q.relay != url or q.kind is not QueueKind.DOOMED:
                continue
            try:
                await self._pool.delete_queue(url, q.recipient_id, SigningKey(q.auth_seed))
            except RelayRefused as exc:
                if exc.code not in _PERMANENT:
                    raise
            await self._db(functools.partial(self._store.delete_queue, url, q.recipient_id))
            self._queues.pop((url, q.recipient_id), None)

    async def _send_row(self, row: OutboxRow, *, announce: bool = True) -> bool:
        """Send one outbox block; on the relay's OK delete the row (and mark its message SENT)
        and return True. A permanent refusal returns False after recording it; transient
        failures raise RelayError and leave the row for a retry."""
        try:
            await self._pool.send(row.relay, row.sender_id, SigningKey(row.auth_seed), row.block)
        except RelayRefused as exc:
            if exc.code not in _PERMANENT:
                raise
            await self._refused(row, announce=announce)
            return False
        self._stats["sent"] += 1

        def done() -> bool:
            with self._store.transaction():
                self._store.delete_outbox(row.id)
                if row.message_id is None:
                    return False
                return self._store.set_message_state(
                    row.message_id, MessageState.SENT, (MessageState.QUEUED,)
                )

        if await self._db(done) and row.message_id is not None:
            self._publish(MessageStateChanged(row.contact_id, row.message_id, MessageState.SENT))
        return True

    async def _refused(self, row: OutboxRow, *, announce: bool = True) -> None:
        """The relay will never take this block: the queue is gone or secured against us."""
        self._stats["refused"] += 1

        def work() -> None:
            with self._store.transaction():
                self._store.delete_outbox(row.id)
                if row.message_id is not None:
                    self._store.set_message_state(
                        row.message_id,
                        MessageState.FAILED,
                        (MessageState.QUEUED, MessageState.SENT),
                    )
                if row.kind is OutboxKind.ACCEPT:
                    self._store.delete_contact_outbox(row.contact_id)
                    self._store.set_contact_state(row.contact_id, ContactState.FAILED)

        await self._db(work)
        if row.message_id is not None:
            self._publish(
                MessageStateChanged(row.contact_id, row.message_id, MessageState.FAILED)
            )
        if row.kind is OutboxKind.ACCEPT and announce:
            self._publish(ContactFailed(await self._info_by_id(row.contact_id)))

    # ------------------------------------------------------------------ receiving

    def _on_state(self, url: str, state: ConnectionState) -> None:
        self._publish(ConnectionChanged(url, state))
        if state is ConnectionState.CONNECTED:
            self._connected_at[url] = time.monotonic()
            self._kick(url)
        else:
            self._connected_at.pop(url, None)

    def _on_taken_over(self, url: str, recipient_id: bytes) -> None:
        self._stats["subscriptions_taken_over"] += 1
        q = self._queues.get((url, recipient_id))
        if q is None or q.kind is QueueKind.INVITATION or not q.owner:
            self._publish(SubscriptionTakenOver(url, None))
            return
        self._spawn(self._announce_taken_over(url, q.owner))

    async def _announce_taken_over(self, url: str, cid: str) -> None:
        try:
            contact: ContactInfo | None = await self._info_by_id(cid)
        except NoSuchContact:
            contact = None
        self._publish(SubscriptionTakenOver(url, contact))

    async def _on_message(self, url: str, msg: rp.Msg) -> None:
        """Called by the pool for each pushed message, one at a time per relay, in order."""
        if self._locked:
            return
        self._inflight += 1
        self._activity.set()
        try:
            q = self._queues.get((url, msg.recipient_id))
            if q is None or q.kind is QueueKind.DOOMED:
                self._stats["dropped_unknown_queue"] += 1
                await self._ack(url, msg)
            elif q.kind is QueueKind.INVITATION:
                await self._on_invitation_block(q, msg)
            else:
                await self._on_contact_block(q, msg)
        finally:
            self._inflight -= 1
            self._activity.set()

    async def _ack(self, url: str, msg: rp.Msg) -> None:
        """Acknowledge a message already handled (stored, or deliberately dropped), without
        waiting for the relay: the next pushed message is handled meanwhile, so a backlog
        drains at the relay's pace, not one round trip per message (over Tor, about a second
        each). The ACK is quiet (QACK): the relay answers only a failure, and a failed ACK
        only means the message comes again, which the replay window drops. Pending ACKs
        count as activity, so a one-shot sync waits for them to be sent, and it lets them
        finish before it closes the connections (the relay reads them before the close)."""
        if self._locked:
            return  # redelivered next time; the replay window drops it then
        pool = self._pool  # the connection the message came on, not a later pool

        async def send() -> None:
            try:
                await pool.ack(url, msg.recipient_id, msg.msg_id, quiet=True)
            except RelayError:
                # Redelivered later; the replay window drops it then.
                self._stats["ack_failed"] += 1

        self._inflight += 1
        task = self._spawn(send())
        self._acks.add(task)
        task.add_done_callback(self._ack_done)

    def _ack_done(self, task: asyncio.Task[Any]) -> None:
        self._acks.discard(task)
        self._inflight -= 1
        self._activity.set()

    async def _subscribe_many(self, queues: list[QueueRow]) -> None:
        """Subscribe ``queues``, :data:`SUB_PIPELINE` at a time (one round trip each batch,
        not each queue)."""
        for start in range(0, len(queues), SUB_PIPELINE):
            chunk = queues[start : start + SUB_PIPELINE]
            await asyncio.gather(*(self._subscribe(q) for q in chunk))

    async def _on_invitation_block(self, q: QueueRow, msg: rp.Msg) -> None:
        inv_id = bytes.fromhex(q.owner)
        async with self._lock("invitation:" + q.owner):
            blob = await self._db(lambda: self._store.invitation(inv_id))
            if blob is None:
                self._stats["dropped_unknown_queue"] += 1
                await self._ack(q.relay, msg)
                return
            try:
                pending = PendingInvitation.from_bytes(blob, self._pickle_key, CRYPTO)
                channel, effects = pending.receive(msg.body, now_ms=self._now_ms(), rng=self._rng)
            except InvitationUsed:
                self._stats["dropped_invitation_used"] += 1
                await self._ack(q.relay, msg)
                return
            except InvitationExpired:
                self._stats["dropped_invitation_expired"] += 1
                await self._ack(q.relay, msg)
                return
            except (DecryptError, KithError, ValueError):
                self._stats["dropped_undecryptable"] += 1
                await self._ack(q.relay, msg)
                return
            secure, confirm = effects
            if not isinstance(secure, SecureInbox) or not isinstance(confirm, SendBlock):
                raise TypeError("handshake effects out of order")
            cid = self._new_contact_id()
            now = self._now_ms()
            pending_blob = pending.to_bytes(self._pickle_key)
            channel_blob = channel.to_bytes(self._pickle_key)
            verification = ContactVerification(channel.their_keys).to_bytes()
            moved = replace(
                q, kind=QueueKind.CONTACT, owner=cid, secure_key=secure.sender_key, secured=False
            )
            out = self._outbox_for(cid, confirm, OutboxKind.CONFIRM)
            default = self._default_disappear

            def save() -> None:
                with self._store.transaction():
                    row = ContactRow(
                        cid,
                        _default_name(self._store),
                        ContactState.ACTIVE,
                        inv_id,
                        channel_blob,
                        verification,
                        default,
                        now,
                    )
                    self._store.invitation_used(inv_id, pending_blob, cid)
                    self._store.insert_contact(row)
                    self._store.update_queue(moved)
                    self._store.insert_outbox(out)

            await self._db(save)
            self._channels[cid] = channel
            self._queues[(q.relay, q.recipient_id)] = moved
        await self._ack(q.relay, msg)
        self._stats["contacts_added"] += 1
        self._kick(q.relay)
        self._kick(out.relay)
        self._publish(ContactAdded(await self._info_by_id(cid)))

    async def _on_contact_block(self, q: QueueRow, msg: rp.Msg) -> None:
        cid = q.owner
        published: list[Event] = []
        kicks: set[str] = set()
        self._last_rx[(q.relay, q.recipient_id)] = time.monotonic()
        async with self._lock(cid):
            try:
                channel = await self._channel(cid)
            except NoSuchContact:
                self._stats["dropped_unknown_queue"] += 1
                await self._ack(q.relay, msg)
                return
            try:
                event = channel.receive(msg.body, now_ms=self._now_ms(), rng=self._rng)
            except (DecryptError, KithError, ValueError):
                # Forged, garbage, or a replay of a block already processed (a crash after
                # the commit and before the ACK ends up here): drop it, never store it.
                self._stats["dropped_undecryptable"] += 1
                await self._ack(q.relay, msg)
                return
            try:
                await self._dispatch(cid, q, channel, event, published, kicks)
            except BaseException:
                self._channels.pop(cid, None)  # the committed state is the truth
                raise
            if channel.missing():
                self._schedule_gap_check(cid)
        await self._ack(q.relay, msg)
        for url in kicks:
            self._kick(url)
        for e in published:
            self._publish(e)

    async def _dispatch(
        self,
        cid: str,
        q: QueueRow,
        channel: Channel,
        event: ChannelEvent,
        published: list[Event],
        kicks: set[str],
    ) -> None:
        """Commit what one decrypted block means. Runs under the contact's lock; the channel
        has already moved, so every branch saves it (in the same transaction as its effects)."""
        if isinstance(event, Received):
            await self._received(cid, channel, event, published, kicks)
        elif isinstance(event, Delivered):
            await self._delivered(cid, channel, event, published)
        elif isinstance(event, Confirmed):
            await self._confirmed(cid, q, channel, event, published, kicks)
        elif isinstance(event, ResendRequested):
            await self._resend(cid, channel, event, kicks)
        elif isinstance(event, PeerMoved):
            await self._peer_moved(cid, channel, event, published, kicks)
        elif isinstance(event, InboxMoved):
            await self._inbox_moved(cid, channel, event, published, kicks)
        else:
            await self._save_channel(cid, channel)
        pending = channel.pending_inbox
        if (
            pending is not None
            and pending.recipient_id == q.recipient_id
            and pending.relay == q.relay
            and cid not in self._move_resent
        ):
            # The contact writes to the new queue but its acknowledgement never came: it was
            # lost, so ask again (once per unlock; the contact answers a repeat the same way).
            self._move_resent.add(cid)
            block = channel.resend_move(now_ms=self._now_ms(), rng=self._rng)
            await self._save_with_outbox(cid, channel, [(block, OutboxKind.CONTROL, None)])
            kicks.add(block.queue.relay)

    async def _save_channel(self, cid: str, channel: Channel) -> None:
        blob = channel.to_bytes(self._pickle_key)
        await self._db(lambda: self._store.save_channel(cid, blob))

    async def _save_with_outbox(
        self, cid: str, channel: Channel, blocks: list[tuple[SendBlock, OutboxKind, int | None]]
    ) -> None:
        blob = channel.to_bytes(self._pickle_key)
        outs = [(self._outbox_for(cid, b, kind), mid) for b, kind, mid in blocks]

        def save() -> None:
            with self._store.transaction():
                self._store.save_channel(cid, blob)
                for out, mid in outs:
                    self._store.insert_outbox(out, mid)

        await self._db(save)

    async def _received(
        self,
        cid: str,
        channel: Channel,
        event: Received,
        published: list[Event],
        kicks: set[str],
    ) -> None:
        """A message: stored (once), receipted, and the channel saved, in one commit."""
        header = event.header
        now = self._now_ms()
        if header.msg_type != MessageType.TEXT:
            self._stats["dropped_unsupported_type"] += 1
            await self._save_channel(cid, channel)
            return
        text = event.body.decode("utf-8", errors="replace")
        # Receipted even when it is a duplicate: the sender evidently has not heard yet.
        receipt = channel.send_receipt((header.msg_id,), now_ms=now, rng=self._rng)
        blob = channel.to_bytes(self._pickle_key)
        out = self._outbox_for(cid, receipt, OutboxKind.CONTROL)

        def save() -> tuple[int | None, ContactRow | None]:
            with self._store.transaction():
                row = self._store.contact(cid)
                if row is None:
                    return None, None
                self._store.save_channel(cid, blob)
                mid = self._store.insert_message(
                    NewMessage(
                        cid,
                        False,
                        header.msg_id,
                        header.seq,
                        MessageState.UNREAD,
                        header.flags,
                        text,
                        header.sent_at_ms,
                        now,
                        self._expiry(row.disappear_s, now),
                    )
                )
                self._store.insert_outbox(out)
                return mid, row

        mid, row = await self._db(save)
        kicks.add(out.relay)
        if mid is None or row is None:
            self._stats["duplicates"] += 1
            return
        self._stats["received"] += 1
        message = await self._db(lambda: self._store.message(mid))
        if message is not None:
            published.append(MessageReceived(self._info(row), message))

    async def _delivered(
        self, cid: str, channel: Channel, event: Delivered, published: list[Event]
    ) -> None:
        """A receipt: the contact's device stored these messages."""
        blob = channel.to_bytes(self._pickle_key)

        def save() -> list[int]:
            changed = []
            with self._store.transaction():
                self._store.save_channel(cid, blob)
                for msg_id in event.msg_ids:
                    mid = self._store.outgoing_by_msg_id(cid, msg_id)
                    if mid is None:
                        continue  # expired here, or never ours: receipts name what they like
                    self._store.delete_message_outbox(mid)  # no point sending it again
                    if self._store.set_message_state(
                        mid,
                        MessageState.DELIVERED,
                        (MessageState.QUEUED, MessageState.SENT, MessageState.FAILED),
                    ):
                        changed.append(mid)
            return changed

        for mid in await self._db(save):
            self._stats["delivered"] += 1
            published.append(MessageStateChanged(cid, mid, MessageState.DELIVERED))

    async def _confirmed(
        self,
        cid: str,
        q: QueueRow,
        channel: Channel,
        event: Confirmed,
        published: list[Event],
        kicks: set[str],
    ) -> None:
        blob = channel.to_bytes(self._pickle_key)
        secured = replace(q, secure_key=event.secure.sender_key, secured=False)

        def save() -> ContactRow | None:
            with self._store.transaction():
                self._store.save_channel(cid, blob)
                self._store.set_contact_state(cid, ContactState.ACTIVE)
                self._store.update_queue(secured)
                return self._store.contact(cid)

        row = await self._db(save)
        self._queues[(q.relay, q.recipient_id)] = secured
        kicks.add(q.relay)
        if row is not None:
            published.append(ContactConfirmed(self._info(row)))

    async def _resend(
        self, cid: str, channel: Channel, event: ResendRequested, kicks: set[str]
    ) -> None:
        """The contact lost some of our blocks: send again what each one needs. A text goes
        again with its original message id (the contact stores it once); the handshake
        confirmation (the first or a resent one, which can be lost too) and a pending MOVE are
        made again, once per request; receipts and resend requests are not (receipts are
        idempotent: the contact's resend brings a new one)."""
        now = self._now_ms()
        wanted = tuple(dict.fromkeys(event.seqs))  # each number answered once
        found = {
            seq: await self._db(functools.partial(self._store.outgoing_by_seq, cid, seq))
            for seq in wanted
        }
        blocks: list[tuple[SendBlock, OutboxKind, int | None]] = []
        seqs: list[tuple[int, int]] = []
        move_sent = confirm_sent = False
        for seq in wanted:
            original = found[seq]
            if original is not None:
                mid, msg_id, text, flags = original
                try:
                    block = channel.send(
                        text.encode("utf-8"), now_ms=now, rng=self._rng, msg_id=msg_id,
                        flags=flags,
                    )
                except LocalProtocolError:
                    # It no longer fits (the contact moved to a relay with smaller blocks):
                    # count it rather than fail the whole request forever.
                    self._stats["resend_unavailable"] += 1
                    continue
                blocks.append((block, OutboxKind.MESSAGE, mid))
                seqs.append((mid, block.header.seq))
            elif channel.carried_confirmation(seq):
                if not confirm_sent:
                    confirm_sent = True
                    # A new number, remembered by the channel: that copy can be lost too.
                    confirm = channel.resend_confirmation(now_ms=now, rng=self._rng)
                    blocks.append((confirm, OutboxKind.CONFIRM, None))
            elif channel.pending_inbox is not None and not move_sent:
                # Perhaps the MOVE: repeating it is always safe.
                move_sent = True
                blocks.append(
                    (channel.resend_move(now_ms=now, rng=self._rng), OutboxKind.CONTROL, None)
                )
            else:
                self._stats["resend_unavailable"] += 1  # expired here too, or a control block
        blob = channel.to_bytes(self._pickle_key)
        outs = [(self._outbox_for(cid, b, kind), mid) for b, kind, mid in blocks]

        def save() -> None:
            with self._store.transaction():
                self._store.save_channel(cid, blob)
                for out, mid in outs:
                    self._store.insert_outbox(out, mid)
                for mid, new_seq in seqs:
                    self._store.set_message_seq(mid, new_seq)

        await self._db(save)
        self._stats["resent"] += len(outs)
        kicks.update(out.relay for out, _ in outs)

    async def _peer_moved(
        self,
        cid: str,
        channel: Channel,
        event: PeerMoved,
        published: list[Event],
        kicks: set[str],
    ) -> None:
        """The contact moved its inbox: our channel now sends there. The acknowledgement goes
        out after every block queued before it (the outbox keeps per-contact order across
        relays), so the contact can drain its old queue knowing nothing more will come."""
        await self._save_with_outbox(cid, channel, [(event.send, OutboxKind.CONTROL, None)])
        kicks.add(event.send.queue.relay)
        published.append(ContactMoved(await self._info_by_id(cid)))

    async def _inbox_moved(
        self,
        cid: str,
        channel: Channel,
        event: InboxMoved,
        published: list[Event],
        kicks: set[str],
    ) -> None:
        """The contact acknowledged our move: secure the new inbox, retire the old one (it is
        drained and deleted by :meth:`_retire_drained`)."""
        new = channel.inbox
        old = event.retired
        new_q = self._queues.get((new.relay, new.recipient_id))
        old_q = self._queues.get((old.relay, old.recipient_id))
        if new_q is None:
            new_q = QueueRow(new.relay, new.recipient_id, new.auth_seed, QueueKind.CONTACT, cid)
        new_q = replace(new_q, secure_key=event.secure.sender_key, secured=False)
        retire_ms = self._now_ms() + RETIRE_GIVE_UP_MS
        if old_q is None:
            old_q = QueueRow(old.relay, old.recipient_id, old.auth_seed, QueueKind.RETIRING, cid)
        old_q = replace(old_q, kind=QueueKind.RETIRING, retire_ms=retire_ms)
        blob = channel.to_bytes(self._pickle_key)

        def save() -> None:
            with self._store.transaction():
                self._store.save_channel(cid, blob)
                self._store.upsert_queue(new_q)
                self._store.upsert_queue(old_q)

        await self._db(save)
        self._queues[(new.relay, new.recipient_id)] = new_q
        self._queues[(old.relay, old.recipient_id)] = old_q
        kicks.add(new.relay)
        self._stats["moves_completed"] += 1
        self._schedule_retire()
        published.append(ContactMoved(await self._info_by_id(cid)))

    # ------------------------------------------------------------------ gaps

    def _schedule_gap_check(self, cid: str) -> None:
        if not self._running or cid in self._gap_timers:
            return

        async def later() -> None:
            try:
                await asyncio.sleep(self._options.gap_grace)
                await self._request_missing(cid)
            finally:
                self._gap_timers.pop(cid, None)

        self._gap_timers[cid] = self._spawn(later())

    async def _request_missing(self, cid: str) -> None:
        """Ask the contact to send again what never arrived (the relay had time to deliver)."""
        async with self._lock(cid):
            channel = self._channels.get(cid)
            if channel is None or not channel.missing():
                return
            try:
                block = channel.request_resend(now_ms=self._now_ms(), rng=self._rng)
            except LocalProtocolError:
                return
            blob = channel.to_bytes(self._pickle_key)
            out = self._outbox_for(cid, block, OutboxKind.CONTROL)

            def save() -> None:
                with self._store.transaction():
                    self._store.save_channel(cid, blob)
                    self._store.insert_outbox(out)

            try:
                await self._db(save)
            except BaseException:
                self._channels.pop(cid, None)
                raise
        self._stats["resend_requests"] += 1
        self._kick(out.relay)

    # ------------------------------------------------------------------ moves

    async def _resend_pending_moves(self) -> None:
        """A move started in an earlier session and still unacknowledged: its MOVE or the
        answer may have been lost, so say it once more (the contact answers a repeat alike)."""
        owners: dict[str, int] = {}
        for q in self._queues.values():
            if q.kind is QueueKind.CONTACT:
                owners[q.owner] = owners.get(q.owner, 0) + 1
        for cid, count in owners.items():
            if count < 2 or cid in self._moves_repeated:
                continue  # one inbox: no move pending; or already repeated in this session
            self._moves_repeated.add(cid)
            async with self._lock(cid):
                try:
                    channel = await self._channel(cid)
                    block = channel.resend_move(now_ms=self._now_ms(), rng=self._rng)
                except (NoSuchContact, LocalProtocolError):
                    continue
                try:
                    await self._save_with_outbox(cid, channel, [(block, OutboxKind.CONTROL, None)])
                except BaseException:
                    self._channels.pop(cid, None)
                    raise
            self._kick(block.queue.relay)

    def _schedule_retire(self) -> None:
        if not self._running or (self._retirer is not None and not self._retirer.done()):
            return

        async def loop() -> None:
            while any(q.kind is QueueKind.RETIRING for q in self._queues.values()):
                await asyncio.sleep(self._options.gap_grace)
                await self._retire_drained(quiet=self._options.gap_grace)

        self._retirer = self._spawn(loop())

    async def _retire_drained(self, *, quiet: float) -> None:
        """Delete retired inboxes that have had nothing for ``quiet`` seconds while connected.

        After the contact acknowledged our move it writes only to the new queue, so the old
        one holds at most what was sent before: once its relay has been connected and silent
        for a while, it is drained. A relay unreachable for RETIRE_GIVE_UP_MS after the move
        is given up on (what it still holds is lost with it, which is why one moves away).
        """
        now = time.monotonic()
        for q in list(self._queues.values()):
            if q.kind is not QueueKind.RETIRING:
                continue
            gave_up = q.retire_ms is not None and self._now_ms() >= q.retire_ms
            if not gave_up:
                connected_at = self._connected_at.get(q.relay)
                if connected_at is None or not self._pool.is_connected(q.relay):
                    continue
                last = max(connected_at, self._last_rx.get((q.relay, q.recipient_id), 0.0))
                if now - last < quiet:
                    continue
                try:
                    await self._pool.delete_queue(q.relay, q.recipient_id, SigningKey(q.auth_seed))
                except RelayRefused as exc:
                    if exc.code not in _PERMANENT:
                        continue
                except RelayError:
                    continue
            await self._finish_move(q, gave_up=gave_up)

    async def _finish_move(self, q: QueueRow, *, gave_up: bool) -> None:
        cid = q.owner
        key = (q.relay, q.recipient_id)
        self._pool.unsubscribe(q.relay, q.recipient_id)
        async with self._lock(cid):
            try:
                channel = await self._channel(cid)
            except NoSuchContact:
                return
            retiring = channel.retiring_inbox
            if retiring is not None and retiring.recipient_id == q.recipient_id:
                channel.finish_move()
            blob = channel.to_bytes(self._pickle_key)
            doomed = replace(
                q, kind=QueueKind.DOOMED, owner="", retire_ms=self._now_ms() + RETIRE_GIVE_UP_MS
            )

            def save() -> None:
                with self._store.transaction():
                    self._store.save_channel(cid, blob)
                    if gave_up:
                        self._store.update_queue(doomed)
                    else:
                        self._store.delete_queue(q.relay, q.recipient_id)

            try:
                await self._db(save)
            except BaseException:
                self._channels.pop(cid, None)
                raise
        if gave_up:
            self._queues[key] = doomed
        else:
            self._queues.pop(key, None)
        self._stats["queues_retired"] += 1

    # ------------------------------------------------------------------ background

    async def _settle(self) -> None:
        """Wait until no message has been handled for ``settle`` seconds."""
        while True:
            self._activity.clear()
            try:
                async with asyncio.timeout(self._options.settle):
                    await self._activity.wait()
            except TimeoutError:
                if self._inflight == 0:
                    return

    async def _sweeper(self) -> None:
        while not self._locked:
            await self.sweep()
            next_ms = await self._db(self._store.next_expiry)
            delay = self._options.sweep_interval
            if next_ms is not None:
                delay = min(delay, max(0.05, (next_ms - self._now_ms()) / 1000))
            await asyncio.sleep(delay)

