"""Typed events the client service publishes ("attributes down, messages up").

An interface subscribes with :meth:`~kith.client.service.ClientService.events` and receives
every event published after it subscribed, in publication order. Events are published only
after the change they describe is committed to the vault, so an interface that reacts to one
by querying the service sees the new state.

Events carry snapshots (:mod:`kith.client.model`), never keys, queue ids or relay secrets.
"""

from __future__ import annotations

from dataclasses import dataclass

from kith.client.model import ContactInfo, MessageInfo, MessageState
from kith.client.transport import ConnectionState

__all__ = [
    "ConnectionChanged",
    "ContactAdded",
    "ContactConfirmed",
    "ContactFailed",
    "ContactForgotten",
    "ContactMoved",
    "ContactVerified",
    "Event",
    "KeyChanged",
    "MessageReceived",
    "MessageStateChanged",
    "MessagesExpired",
    "SubscriptionTakenOver",
]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A new message from a contact was stored (each message is published once)."""

    contact: ContactInfo
    message: MessageInfo


@dataclass(frozen=True, slots=True)
class MessageStateChanged:
    """An outgoing message moved on: sent to the relay, delivered, or failed."""

    contact_id: str
    message_id: int
    state: MessageState


@dataclass(frozen=True, slots=True)
class ContactAdded:
    """Someone accepted one of our invitations: a new contact, under a default name."""

    contact: ContactInfo


@dataclass(frozen=True, slots=True)
class ContactConfirmed:
    """The inviter answered our acceptance: the relationship is complete."""

    contact: ContactInfo


@dataclass(frozen=True, slots=True)
class ContactFailed:
    """The inviter's relay refused our acceptance (the invitation was used by someone else)."""

    contact: ContactInfo


@dataclass(frozen=True, slots=True)
class ContactForgotten:
    contact_id: str


@dataclass(frozen=True, slots=True)
class ContactVerified:
    """Safety numbers matched; the contact is verified."""

    contact: ContactInfo


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """The contact's identity keys changed. Sending is blocked until the user acknowledges
    it (:meth:`~kith.client.service.ClientService.acknowledge_key_change`)."""

    contact: ContactInfo


@dataclass(frozen=True, slots=True)
class ContactMoved:
    """A contact's queues moved to another relay (ours or theirs)."""

    contact: ContactInfo


@dataclass(frozen=True, slots=True)
class MessagesExpired:
    """Disappearing messages were deleted from the vault."""

    contact_id: str
    count: int


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """A relay connection changed state. ``relay`` is the relay's address as configured."""

    relay: str
    state: ConnectionState


@dataclass(frozen=True, slots=True)
class SubscriptionTakenOver:
    """Another connection subscribed to one of this profile's inboxes at its relay.

    Only a holder of that inbox's key can do that: a copy of this profile (a cloned or seized
    device, or a backup) is running elsewhere. ``contact`` is None for an invitation's inbox.
    The service takes the subscription back once; an interface must show this loudly.
    """

    relay: str
    contact: ContactInfo | None


Event = (
    MessageReceived
    | MessageStateChanged
    | ContactAdded
    | ContactConfirmed
    | ContactFailed
    | ContactForgotten
    | ContactVerified
    | KeyChanged
    | ContactMoved
    | MessagesExpired
    | ConnectionChanged
    | SubscriptionTakenOver
)
