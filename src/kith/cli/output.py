"""How the ``kith`` command shows the service's snapshots: JSON for scripts, lines for people.

JSON keys are stable and documented in docs/cli.md; new keys may be added, none will be
renamed or removed without a version note there. JSON is written with ``ensure_ascii`` so that
a script that echoes it to a terminal cannot be made to emit raw control characters.

Anything a contact wrote (message text) is shown to people through :func:`safe`: a contact
could otherwise send terminal escape sequences that rewrite the screen (hide a warning, fake a
safety number) or bidirectional overrides that make one name look like another.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from typing import Any

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
from kith.client.model import ContactInfo, InvitationInfo, MessageInfo, SyncResult
from kith.protocol.envelope import Flags

JsonObject = dict[str, Any]

_KEEP = frozenset("\n\t")


def safe(text: str) -> str:
    """Text a contact chose, made harmless for a terminal.

    Control, format (bidirectional overrides, zero-width characters), surrogate, private-use
    and unassigned characters are shown as ``\\uXXXX``; line breaks and tabs stay.
    """
    out = []
    for ch in text:
        if ch not in _KEEP and unicodedata.category(ch).startswith("C"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def when(value: datetime | None) -> str | None:
    """ISO 8601 in UTC, as JSON carries times."""
    return None if value is None else value.isoformat()


def local_time(value: datetime) -> str:
    """For people: the local date and time to the minute."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M")


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=True)


def emit(obj: object) -> None:
    """One JSON document on one line."""
    print(dumps(obj), flush=True)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    """A side remark for a person (stderr, so that stdout stays what was asked for)."""
    print(f"kith: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- JSON shapes


def contact_json(c: ContactInfo) -> JsonObject:
    return {
        "id": c.id,
        "name": c.name,
        "state": c.state.value,
        "verification": c.verification.name.lower(),
        "disappearing_seconds": c.disappearing_seconds,
        "unread": c.unread,
        "created_at": when(c.created_at),
    }


def message_json(m: MessageInfo, names: Mapping[str, str]) -> JsonObject:
    return {
        "id": m.id,
        "contact_id": m.contact_id,
        "contact": names.get(m.contact_id),
        "direction": "out" if m.outgoing else "in",
        "text": m.text,
        "state": m.state.value,
        "sent_at": when(m.sent_at),
        "stored_at": when(m.stored_at),
        "expires_at": when(m.expires_at),
        "flags": m.flags,
        "late": m.late,
    }


def sync_json(r: SyncResult) -> JsonObject:
    return {
        "received": r.received,
        "sent": r.sent,
        "queued": r.queued,
        "unreachable": r.unreachable,
    }


def invitation_json(i: InvitationInfo) -> JsonObject:
    return {"link": i.uri, "qr_text": i.qr_text, "expires_at": when(i.expires_at)}


def event_json(e: Event, names: Mapping[str, str]) -> JsonObject:
    """One event of :mod:`kith.client.events` as ``{"event": NAME, ...}``."""
    if isinstance(e, MessageReceived):
        return {
            "event": "message",
            "contact": contact_json(e.contact),
            "message": message_json(e.message, {e.contact.id: e.contact.name, **names}),
        }
    if isinstance(e, MessageStateChanged):
        return {
            "event": "message_state",
            "contact_id": e.contact_id,
            "message_id": e.message_id,
            "state": e.state.value,
        }
    if isinstance(e, ContactForgotten):
        return {"event": "contact_forgotten", "contact_id": e.contact_id}
    if isinstance(e, MessagesExpired):
        return {"event": "messages_expired", "contact_id": e.contact_id, "count": e.count}
    if isinstance(e, ConnectionChanged):
        return {"event": "connection", "relay": e.relay, "state": e.state.value}
    if isinstance(e, SubscriptionTakenOver):
        return {
            "event": "subscription_taken_over",
            "relay": e.relay,
            "contact": contact_json(e.contact) if e.contact is not None else None,
        }
    kinds: dict[type, str] = {
        ContactAdded: "contact_added",
        ContactConfirmed: "contact_confirmed",
        ContactFailed: "contact_failed",
        ContactVerified: "contact_verified",
        KeyChanged: "key_changed",
        ContactMoved: "contact_moved",
    }
    return {"event": kinds[type(e)], "contact": contact_json(e.contact)}


# ----------------------------------------------------------------------------- for people


def contact_line(c: ContactInfo) -> str:
    parts = [c.name, c.state.value, c.verification.name.lower()]
    if c.unread:
        parts.append(f"{c.unread} unread")
    return "  ".join(parts)


def message_line(m: MessageInfo, names: Mapping[str, str]) -> str:
    """``2026-01-02 13:04  alice > text`` (incoming) or ``... you > alice: text``."""
    who = names.get(m.contact_id, m.contact_id)
    stamp = local_time(m.stored_at if not m.outgoing else m.sent_at)
    text = safe(m.text).replace("\n", "\n" + " " * 18)
    if m.outgoing:
        return f"{stamp}  you > {who}: {text}  [{m.state.value}]"
    marks = ""
    if m.flags & Flags.DURESS:
        marks += "!! SENT UNDER DURESS: do not meet, do not trust requests  "
    if m.late:
        marks += "(late: written before the message(s) above)  "
    return f"{stamp}  {who} > {marks}{text}"


def event_line(e: Event, names: Mapping[str, str]) -> str | None:
    """A line for a person, or None for events only scripts care about."""
    if isinstance(e, MessageReceived):
        return message_line(e.message, {e.contact.id: e.contact.name, **names})
    if isinstance(e, ContactAdded):
        return (
            f"-- new contact {e.contact.name!r} accepted your invitation "
            f"(rename: kith rename {e.contact.name} NAME; then compare safety numbers)"
        )
    if isinstance(e, ContactConfirmed):
        return f"-- {e.contact.name} answered: the contact is set up"
    if isinstance(e, ContactFailed):
        return f"-- {e.contact.name}: the invitation was used by someone else; nothing can be sent"
    if isinstance(e, ContactVerified):
        return f"-- {e.contact.name} is verified"
    if isinstance(e, KeyChanged):
        return (
            f"!! {e.contact.name}'s keys CHANGED: do not trust new messages until you have "
            "compared safety numbers again in person"
        )
    if isinstance(e, MessageStateChanged) and e.state.value == "failed":
        who = names.get(e.contact_id, e.contact_id)
        return f"!! a message to {who} was refused by their relay and will not arrive"
    if isinstance(e, MessagesExpired):
        who = names.get(e.contact_id, e.contact_id)
        return f"-- {e.count} disappearing message(s) with {who} deleted"
    if isinstance(e, SubscriptionTakenOver):
        whose = f"your inbox for {e.contact.name}" if e.contact else "an invitation's inbox"
        return (
            f"!! another device just subscribed to {whose}: a copy of this profile may be "
            "running elsewhere (a seized or cloned phone, or a backup). Warn your contacts."
        )
    if isinstance(e, ConnectionChanged) and e.state.value != "connecting":
        return f"-- relay {e.state.value}"
    return None
