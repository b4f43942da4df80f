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
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from kith.client.events import Event
from kith.client.model import ContactInfo, InvitationInfo, MessageInfo, SyncResult
from kith.client.transport import Backoff
from kith.crypto.kdf import Argon2idParams
from kith.protocol.safety import SafetyNumber

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
#: A contact named by its alias or local id, or a snapshot of it.
ContactRef = str | ContactInfo

DAY: Final = 86400
#: Disappearing messages are on by default: a seized phone should hold at most a week.
DEFAULT_DISAPPEARING_SECONDS: Final = 7 * DAY
#: Shortest and longest timer a person may choose (None turns it off).
MIN_DISAPPEARING_SECONDS: Final = 10
MAX_DISAPPEARING_SECONDS: Final = 366 * DAY
#: How long a new invitation stays valid unless asked otherwise (the protocol allows 30 days).
DEFAULT_INVITATION_TTL: Final = 7 * DAY


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


class ClientService:
    """One unlocked profile. Create with :meth:`create` or :meth:`unlock`; finish with
    :meth:`lock` (or ``async with``).

    Every method raises :class:`~kith.client.errors.ProfileLocked` once locked. Methods that
    name a contact take its alias, its local id, or a :class:`ContactInfo`.
    """

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
        raise NotImplementedError

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
        raise NotImplementedError

    async def lock(self) -> None:
        """Stop every background task, close the relay connections and the vault, and end
        every event stream. Unsent messages stay in the outbox for next time. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> ClientService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.lock()

    @property
    def locked(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`lock`."""
        raise NotImplementedError

    @property
    def relay_url(self) -> str:
        """The relay new queues are created on (invitations, acceptances)."""
        raise NotImplementedError

    async def set_relay(self, relay_url: str) -> None:
        """Change the relay new queues are created on. Existing contacts stay where they are
        (move them with :meth:`rotate`)."""
        raise NotImplementedError

    @property
    def stats(self) -> dict[str, int]:
        """Counters since unlock (dropped blocks by reason, retries...). No content, no ids."""
        raise NotImplementedError

    async def start(self) -> None:
        """Long-running mode: subscribe every inbox and run the receiver, the outbox flusher
        and the expiry sweeper in the background until :meth:`lock`."""
        raise NotImplementedError

    async def sync(self, timeout: float = 30.0) -> SyncResult:
        """One-shot mode: connect, send the outbox, receive what the relays hold, return.

        Never raises for an unreachable relay: what could not be sent stays queued and the
        result says so. Also works while :meth:`start` is running (then it only waits for the
        outbox to drain and the inboxes to go quiet).
        """
        raise NotImplementedError

    async def sweep(self) -> int:
        """Delete expired messages and invitations now; returns how many messages went.
        (The background sweeper and :meth:`unlock` call this too.)"""
        raise NotImplementedError

    # ------------------------------------------------------------------ invitations

    async def create_invitation(
        self, relay_url: str | None = None, ttl: float = DEFAULT_INVITATION_TTL
    ) -> InvitationInfo:
        """Make a one-time invitation (``ttl`` seconds, at most 30 days) on ``relay_url`` (default:
        :attr:`relay_url`). Needs the relay: creates the queue the invitee will answer on.

        Whoever accepts it first becomes a contact named ``contact-N`` (rename them); a
        :class:`~kith.client.events.ContactAdded` event announces it.
        """
        raise NotImplementedError

    async def accept_invitation(self, uri: str, name: str) -> ContactInfo:
        """Accept an invitation link (or scanned QR text) and save the inviter as ``name``.

        Raises InvalidInvitation, ExpiredInvitation, UsedInvitation (the inviter's relay says
        someone was first), OwnInvitation, ContactNameTaken, InvalidContactName or
        RelayUnreachable (nothing was created). Returns the contact in state PENDING until the
        inviter confirms. If the relay goes away after the contact was saved, the acceptance
        stays in the outbox and goes out on the next sync.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ contacts

    async def contacts(self) -> list[ContactInfo]:
        """Every contact, by name."""
        raise NotImplementedError

    async def contact(self, name_or_id: str) -> ContactInfo:
        """One contact by alias (first) or local id. Raises NoSuchContact."""
        raise NotImplementedError

    async def rename(self, contact: ContactRef, new_name: str) -> ContactInfo:
        raise NotImplementedError

    async def safety_number(self, contact: ContactRef) -> SafetyNumber:
        """The number to compare with the contact (``.display()``; ``.qr_payload()`` to show)."""
        raise NotImplementedError

    async def verify(self, contact: ContactRef, code_or_scanned_payload: str) -> ContactInfo:
        """Mark the contact verified if the digits the person typed, or the contact's QR code
        they scanned (``KITH:VERIFY/...``), match. Raises SafetyNumberMismatch otherwise, and
        KeyChangedError while a key change is unacknowledged."""
        raise NotImplementedError

    async def confirm_verified(self, contact: ContactRef) -> ContactInfo:
        """The person compared both screens side by side and says the numbers are equal."""
        raise NotImplementedError

    async def acknowledge_key_change(self, contact: ContactRef) -> ContactInfo:
        """The person saw that the contact's keys changed; sending resumes, unverified."""
        raise NotImplementedError

    async def forget(self, contact: ContactRef) -> None:
        """Delete the contact: its messages, outbox and channel are wiped from the vault, and
        our inbox queue for it is deleted at the relay (now, or as soon as it is reachable)."""
        raise NotImplementedError

    async def set_disappearing(self, contact: ContactRef, seconds: int | None) -> ContactInfo:
        """Keep messages with this contact for ``seconds`` after they are stored (None: until
        deleted). Applies to new messages; a shorter timer also shortens existing ones."""
        raise NotImplementedError

    async def set_default_disappearing(self, seconds: int | None) -> None:
        """The timer new contacts start with (initially 7 days)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ messages

    async def send(self, contact: ContactRef, text: str) -> MessageInfo:
        """Write a message. It is in the vault's outbox when this returns (state QUEUED) and
        goes out at once in long-running mode, else on the next :meth:`sync`. Raises
        MessageTooLong, KeyChangedError, ContactUnavailable."""
        raise NotImplementedError

    async def messages(self, contact: ContactRef, limit: int = 50) -> list[MessageInfo]:
        """The last ``limit`` messages with the contact, oldest first."""
        raise NotImplementedError

    async def mark_read(self, contact: ContactRef) -> int:
        """Mark every incoming message from the contact read; returns how many were unread."""
        raise NotImplementedError

    async def inbox(self, *, mark_read: bool = True) -> list[MessageInfo]:
        """Every unread incoming message, oldest first (and mark them read)."""
        raise NotImplementedError

    async def rotate(self, contact: ContactRef, new_relay_url: str) -> ContactInfo:
        """Move our inbox for this contact to ``new_relay_url`` without losing messages: a new
        queue there, the contact told to send there, the old queue drained and deleted."""
        raise NotImplementedError

    def events(self) -> AsyncIterator[Event]:
        """A stream of every event published from now on (iterate with ``async for``; it
        ends when the service locks)."""
        raise NotImplementedError
