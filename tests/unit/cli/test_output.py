"""What the command prints, without a relay: JSON shapes against docs/cli.md, events, the
exit-code table, terminal safety, and chat's input lines."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kith.cli import codes, live, main, output
from kith.client import events as ev
from kith.client.model import (
    ContactInfo,
    ContactState,
    MessageInfo,
    MessageState,
    SyncResult,
    Verification,
)
from kith.client.transport import ConnectionState
from kith.protocol.envelope import Flags

DOC = (Path(__file__).resolve().parents[3] / "docs" / "cli.md").read_text(encoding="utf-8")
NOW = datetime(2026, 1, 2, 13, 4, 5, tzinfo=UTC)
CONTACT = ContactInfo("00112233aabbccdd", "alice", ContactState.ACTIVE, Verification.VERIFIED,
                      604800, 2, NOW)
MESSAGE = MessageInfo(7, CONTACT.id, False, "hello", MessageState.UNREAD, NOW, NOW, None, 0)


def sample(kind: type) -> ev.Event:
    if kind is ev.MessageReceived:
        return ev.MessageReceived(CONTACT, MESSAGE)
    if kind is ev.MessageStateChanged:
        return ev.MessageStateChanged(CONTACT.id, 7, MessageState.DELIVERED)
    if kind is ev.ContactForgotten:
        return ev.ContactForgotten(CONTACT.id)
    if kind is ev.MessagesExpired:
        return ev.MessagesExpired(CONTACT.id, 3)
    if kind is ev.ConnectionChanged:
        return ev.ConnectionChanged("ws://127.0.0.1:7650", ConnectionState.CONNECTED)
    if kind is ev.SubscriptionTakenOver:
        return ev.SubscriptionTakenOver("ws://127.0.0.1:7650", CONTACT)
    return typing.cast(ev.Event, kind(CONTACT))


@pytest.mark.parametrize("kind", typing.get_args(ev.Event))
def test_every_event_has_a_documented_json_form(kind: type) -> None:
    obj = output.event_json(sample(kind), {CONTACT.id: CONTACT.name})
    assert f'"event": "{obj["event"]}"' in DOC or f'"{obj["event"]}"' in DOC
    json.dumps(obj)  # serialisable as is
    for key in obj:
        assert f'"{key}"' in DOC, key


def test_duress_and_late_messages_are_marked_for_people() -> None:
    duress = dataclasses.replace(MESSAGE, flags=int(Flags.DURESS))
    late = dataclasses.replace(MESSAGE, late=True)
    assert "SENT UNDER DURESS" in output.message_line(duress, {})
    assert "late" in output.message_line(late, {})
    plain = output.message_line(MESSAGE, {})
    assert "DURESS" not in plain and "late" not in plain
    assert output.message_json(late, {})["late"] is True


def test_a_taken_over_subscription_is_loud_for_people() -> None:
    line = output.event_line(sample(ev.SubscriptionTakenOver), {})
    assert line is not None and line.startswith("!!") and CONTACT.name in line


def test_json_shapes_match_the_documentation() -> None:
    for obj in (
        output.contact_json(CONTACT),
        output.message_json(MESSAGE, {CONTACT.id: "alice"}),
        output.sync_json(SyncResult(1, 2, 3, 4)),
    ):
        for key in obj:
            assert f'"{key}"' in DOC, key
    assert output.contact_json(CONTACT)["verification"] == "verified"
    assert output.message_json(MESSAGE, {})["contact"] is None
    assert output.message_json(MESSAGE, {})["sent_at"] == "2026-01-02T13:04:05+00:00"


def test_exit_codes_are_documented_once_and_agree() -> None:
    table = {int(m) for m in re.findall(r"^\| (\d+) \|", DOC, flags=re.MULTILINE)}
    constants = {v for k, v in vars(codes).items() if k.startswith("EXIT_")}
    assert table == constants
    for value in constants:
        assert re.search(rf"^- {value}\s", main.__doc__ or "", flags=re.MULTILINE), value


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),
        ("\x1b[2J", "\\u001b[2J"),
        ("bell\x07", "bell\\u0007"),
        ("\u202eevil", "\\u202eevil"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("c1\x9bcsi", "c1\\u009bcsi"),
        ("\u00e9t\u00e9 \u2014 \U0001f600", "\u00e9t\u00e9 \u2014 \U0001f600"),
    ],
)
def test_safe_for_terminals(text: str, shown: str) -> None:
    assert output.safe(text) == shown


def test_message_lines_escape_what_contacts_write() -> None:
    hostile = MessageInfo(8, CONTACT.id, False, "\x1b]0;title\x07hi\nthere", MessageState.UNREAD,
                          NOW, NOW, None, 0)
    line = output.message_line(hostile, {CONTACT.id: "alice"})
    assert "\x1b" not in line and "\x07" not in line
    assert line.endswith("alice > \\u001b]0;title\\u0007hi\n" + " " * 18 + "there")


def test_people_are_warned_of_key_changes() -> None:
    line = output.event_line(ev.KeyChanged(CONTACT), {})
    assert line is not None and "CHANGED" in line


@pytest.mark.parametrize(
    ("raw", "json_mode", "expected"),
    [
        (b"hello\n", False, "hello"),
        (b"hello\r\n", False, "hello"),
        (b"   \n", False, None),
        (b'{"text": "hi"}\n', True, "hi"),
        (b'{"text": "line\\nbreak"}\n', True, "line\nbreak"),
    ],
)
def test_chat_lines(raw: bytes, json_mode: bool, expected: str | None) -> None:
    assert live._parse_line(raw, json_mode) == expected


@pytest.mark.parametrize(
    ("raw", "json_mode", "why"),
    [
        (b"\xff\xfe\n", False, "not UTF-8"),
        (b"hello\n", True, "not JSON"),
        (b'["text"]\n', True, "expected"),
        (b'{"text": 5}\n', True, "expected"),
        (b'{"body": "x"}\n', True, "expected"),
    ],
)
def test_chat_refuses_lines(raw: bytes, json_mode: bool, why: str) -> None:
    with pytest.raises(live.BadLine, match=why):
        live._parse_line(raw, json_mode)
