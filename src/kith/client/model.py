"""What the client service hands to interfaces: plain, frozen snapshots.

Interfaces never see a channel, a queue id or a key: only these values. A snapshot does not
change when the profile does; ask the service again (or listen to
:mod:`kith.client.events`) for the current state.

Times are timezone-aware UTC :class:`~datetime.datetime` values made from the service's
injected clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from kith.protocol.safety import Status as Verification

__all__ = [
    "ContactInfo",
    "ContactState",
    "InvitationInfo",
    "MessageInfo",
    "MessageState",
    "SyncResult",
    "Verification",
    "from_ms",
]


def from_ms(ms: int) -> datetime:
    """Unix milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


class ContactState(enum.Enum):
    """Where the relationship with a contact stands."""

    #: We accepted their invitation; their confirmation has not arrived yet. Sending works
    #: (messages wait at their relay), receiving starts with the confirmation.
    PENDING = "pending"
    #: The handshake is complete in both directions.
    ACTIVE = "active"
    #: Their relay refused our acceptance: someone else used the invitation first.
    FAILED = "failed"


class MessageState(enum.Enum):
    """One message's state. Outgoing: QUEUED -> SENT -> DELIVERED (or FAILED).
    Incoming: UNREAD -> READ."""

    QUEUED = "queued"  #: stored here, not yet accepted by the contact's relay
    SENT = "sent"  #: the contact's relay stored it
    DELIVERED = "delivered"  #: the contact's device stored it (a delivery receipt came back)
    FAILED = "failed"  #: the contact's relay refused it for good
    UNREAD = "unread"
    READ = "read"


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """A contact as this profile knows them: a local alias and a random local id.

    ``id`` is meaningful only inside this profile (nothing global identifies anyone in kith).
    """

    id: str
    name: str
    state: ContactState
    verification: Verification
    #: How long this device keeps messages with this contact; None = until deleted.
    disappearing_seconds: int | None
    unread: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message, in or out. ``id`` grows in the order messages were stored here, which is
    the order they were written (outgoing) or arrived (incoming), per contact and overall."""

    id: int
    contact_id: str
    outgoing: bool
    text: str
    state: MessageState
    #: For outgoing messages our clock when written; for incoming the sender's claim.
    sent_at: datetime
    #: When this device stored it; the disappearing timer runs from here.
    stored_at: datetime
    expires_at: datetime | None
    #: Inner-header flags as sent (kith.protocol.envelope.Flags): duress, liveness, ...
    flags: int
    #: Incoming only: the sender wrote this before a message that arrived earlier (a relay
    #: held it back or it was lost and sent again). Interfaces must show it, because the order
    #: of "come at 9" and "do not come" matters.
    late: bool = False


@dataclass(frozen=True, slots=True)
class InvitationInfo:
    """A new one-time invitation: show ``qr_text`` as a QR code or pass ``uri`` on."""

    uri: str
    qr_text: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one :meth:`~kith.client.service.ClientService.sync` did."""

    received: int  #: messages stored (new ones only: duplicates are not counted)
    sent: int  #: outgoing blocks a relay accepted (messages, receipts, handshakes)
    queued: int  #: outgoing blocks still waiting (relay unreachable or busy)
    unreachable: int  #: relays that could not be reached
