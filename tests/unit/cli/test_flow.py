"""The whole person-facing flow through ``main()``: two profiles, an invitation, safety numbers
compared, messages both ways, and what each read command prints (text and ``--json``)."""

from __future__ import annotations

import stat

from kith.cli.codes import EXIT_MISMATCH, EXIT_OK
from tests.unit.cli.conftest import Profile, pair

CONTACT_KEYS = {
    "id", "name", "state", "verification", "disappearing_seconds", "unread", "created_at",
}
MESSAGE_KEYS = {
    "id", "contact_id", "contact", "direction", "text", "state", "sent_at", "stored_at",
    "expires_at", "flags", "late",
}
SYNC_KEYS = {"received", "sent", "queued", "unreachable"}


def test_full_flow(alice: Profile, bob: Profile) -> None:
    assert stat.S_IMODE(alice.path.stat().st_mode) == 0o700

    invitation = alice("invite", "--json").json()
    assert set(invitation) == {"link", "qr_text", "expires_at"}
    assert invitation["link"].startswith("kith:invite/")

    accepted = bob("accept", invitation["link"], "--name", "alice", "--json")
    assert accepted.code == EXIT_OK, accepted.err
    body = accepted.json()
    assert set(body) == {"contact", "sync"}
    assert set(body["contact"]) == CONTACT_KEYS
    assert set(body["sync"]) == SYNC_KEYS
    assert body["contact"]["name"] == "alice"

    # The inviter learns of the acceptance on its next sync, under a default name.
    listed = alice("contacts", "--json").json()
    assert [(c["name"], c["state"]) for c in listed["contacts"]] == [("contact-1", "active")]
    assert alice("rename", "contact-1", "bob").out.strip() == "renamed to bob"

    # Safety numbers: each side types the digits the other side's screen shows.
    a_shows = alice("verify", "bob", "--show", "--json").json()
    b_shows = bob("verify", "alice", "--show", "--json").json()
    assert a_shows["safety_number"] == b_shows["safety_number"]
    assert alice("verify", "bob", "--json").json() == a_shows  # no digits: only shown
    shown = alice("verify", "bob")  # no terminal to type on: shown, and how to go on
    assert shown.code == EXIT_OK
    assert shown.out.splitlines()[1] == " ".join(a_shows["safety_number"].split()[:4])
    assert "kith verify bob DIGITS" in shown.err
    assert len(a_shows["safety_number"].replace(" ", "")) == 60
    res = bob("verify", "alice", *a_shows["safety_number"].split())
    assert res.code == EXIT_OK and res.out.strip() == "alice is verified"
    res = alice("verify", "bob", b_shows["safety_number"], "--json")
    assert res.json()["contact"]["verification"] == "verified"

    # Messages both ways: the text from the command line, and from stdin.
    to_bob = ["first from alice", "second from alice\nwith a second line"]
    res = alice("send", "bob", to_bob[0], "--json")
    assert res.code == EXIT_OK, res.err
    sent = res.json()
    assert set(sent["message"]) == MESSAGE_KEYS
    assert sent["message"]["direction"] == "out" and sent["message"]["state"] == "sent"
    assert alice("send", "bob", "-", stdin=to_bob[1] + "\n").code == EXIT_OK

    inbox = bob("inbox", "--json").json()
    assert [m["text"] for m in inbox["messages"]] == to_bob
    assert {m["contact"] for m in inbox["messages"]} == {"alice"}
    assert {m["direction"] for m in inbox["messages"]} == {"in"}
    # Shown once: the inbox marks them read.
    assert bob("inbox", "--json").json()["messages"] == []

    assert bob("send", "alice", "and one from bob").code == EXIT_OK
    res = alice("inbox")
    assert res.code == EXIT_OK
    lines = res.out.splitlines()
    assert len(lines) == 1 and lines[0].endswith("bob > and one from bob")

    # alice's history: her two messages delivered (receipts came back), bob's one read.
    history = alice("messages", "bob", "--json").json()
    assert set(history) == {"contact", "messages", "sync"}
    assert [(m["direction"], m["text"], m["state"]) for m in history["messages"]] == [
        ("out", to_bob[0], "delivered"),
        ("out", to_bob[1], "delivered"),
        ("in", "and one from bob", "read"),
    ]
    contacts = alice("contacts").out.splitlines()
    assert contacts == ["bob  active  verified"]


def test_wrong_digits_leave_the_contact_unverified(alice: Profile, bob: Profile) -> None:
    pair(alice, bob)
    right = alice("verify", "bob", "--show", "--json").json()["safety_number"]
    digits = list(right.replace(" ", ""))
    digits[17] = "0" if digits[17] != "0" else "1"
    res = bob("verify", "alice", "".join(digits))
    assert res.code == EXIT_MISMATCH
    assert res.err.count("\n") == 1 and "do not match" in res.err
    assert bob("contacts", "--json").json()["contacts"][0]["verification"] == "unverified"


def test_people_see_terminal_controls_escaped(alice: Profile, bob: Profile) -> None:
    """A contact cannot drive the reader's terminal: escapes and bidi overrides are shown as
    text in people's output (and JSON keeps the exact text, ASCII-escaped)."""
    pair(alice, bob)
    hostile = "\x1b[2J\x1b]0;owned\x07 safe? \u202eevil\u202c"
    assert alice("send", "bob", hostile).code == EXIT_OK
    res = bob("inbox", "--keep-unread")
    assert "\x1b" not in res.out and "\x07" not in res.out and "\u202e" not in res.out
    assert "\\u001b[2J" in res.out and "\\u202e" in res.out
    raw = bob("inbox", "--json")
    assert "\x1b" not in raw.out and "\u202e" not in raw.out
    assert raw.json()["messages"][0]["text"] == hostile


def test_forget(alice: Profile, bob: Profile) -> None:
    pair(alice, bob)
    res = alice("forget", "bob")
    assert res.code == 1 and "--yes" in res.err
    assert [c["name"] for c in alice("contacts", "--json").json()["contacts"]] == ["bob"]
    assert alice("forget", "bob", "--yes").code == EXIT_OK
    assert alice("contacts", "--json").json()["contacts"] == []
    res = alice("send", "bob", "anyone there?")
    assert res.code == 1 and res.err.strip() == "kith: error: no contact named 'bob'"


def test_accept_reads_the_link_from_stdin(alice: Profile, bob: Profile) -> None:
    link = alice("invite", "--json").json()["link"]
    res = bob("accept", "--name", "alice", stdin=link + "\n")
    assert res.code == EXIT_OK, res.err
    assert res.out.strip() == "added alice (pending)"


def test_default_contact_names(alice: Profile, bob: Profile) -> None:
    """Without --name the acceptor picks the first free contact-N, as the inviter does."""
    link = alice("invite", "--json").json()["link"]
    assert bob("accept", link, "--json").json()["contact"]["name"] == "contact-1"


def test_invite_qr_is_a_terminal_code(alice: Profile) -> None:
    res = alice("invite", "--qr")
    assert res.code == EXIT_OK
    lines = res.out.splitlines()
    assert lines[-1].startswith("kith:invite/")
    assert len(lines) > 20 and all(set(line) <= set(" \u2580\u2584\u2588") for line in lines[:-1])
