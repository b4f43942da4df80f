"""Bad input and faults through ``main()``: each gets one line on stderr, the documented exit
code, no traceback (the ``Kith`` helper asserts that on every call), and changes nothing."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from kith.cli import unlock
from kith.cli.codes import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INVITATION,
    EXIT_OK,
    EXIT_PASSPHRASE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from kith.cli.errors import PassphraseInputError
from kith.cli.main import main
from tests.unit.cli.conftest import Kith, Profile, Result, ThreadRelay, make_profile, pair

ANY = "any passphrase"
WRONG = "not alice's passphrase"


def one_line(res: Result) -> str:
    lines = res.err.splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("kith: error: "), res.err
    return lines[0]


def names(p: Profile) -> list[str]:
    return [c["name"] for c in p("contacts", "--json").json()["contacts"]]


def _flip(link: str, at: int) -> str:
    prefix, body = link.split("/", 1)
    raw = bytearray(base64.b32decode(body + "=" * (-len(body) % 8)))
    raw[at] ^= 0x01
    return prefix + "/" + base64.b32encode(bytes(raw)).decode().rstrip("=")


# ----------------------------------------------------------------------------- invitations


@pytest.mark.parametrize(
    "garbage",
    [
        "hello",
        "kith:invite/",
        "kith:invite/AAAA",
        "kith:invite/not base32 at all!",
        "https://example.invalid/kith:invite/AAAA",
        "kith:invite/" + "A" * 2000,
        "\x1b[2Jkith:invite/AAAA",
    ],
)
def test_garbage_links(bob: Profile, garbage: str) -> None:
    res = bob("accept", garbage, "--name", "x")
    assert res.code == EXIT_INVITATION
    assert one_line(res) == "kith: error: invitation link is not valid"
    assert res.out == ""
    assert names(bob) == []


@pytest.mark.parametrize("at", [1, 40, 150, -1])
def test_tampered_links(alice: Profile, bob: Profile, at: int) -> None:
    """One bit changed anywhere (ids, relay, keys, signature) and the link is refused."""
    link = alice("invite", "--json").json()["link"]
    res = bob("accept", _flip(link, at), "--name", "alice")
    assert res.code == EXIT_INVITATION
    assert one_line(res) == "kith: error: invitation link is not valid"
    assert names(bob) == []


def test_expired_link(alice: Profile, bob: Profile) -> None:
    link = alice("invite", "--ttl", "1", "--json").json()["link"]
    time.sleep(1.1)
    res = bob("accept", link, "--name", "alice")
    assert res.code == EXIT_INVITATION
    assert one_line(res) == "kith: error: invitation expired"
    assert names(bob) == []


def test_reused_links(kith: Kith, relay: ThreadRelay, tmp_path: Path, alice: Profile,
                      bob: Profile) -> None:
    link = alice("invite", "--json").json()["link"]
    assert bob("accept", link, "--name", "alice").code == EXIT_OK
    # The same acceptor again.
    res = bob("accept", link, "--name", "alice-again")
    assert res.code == EXIT_INVITATION
    assert one_line(res) == "kith: error: invitation already used"
    assert names(bob) == ["alice"]
    # Someone else, after the inviter has seen the first acceptance (its relay now refuses).
    assert names(alice) == ["contact-1"]
    carol = make_profile(kith, tmp_path / "carol", relay.url, "carol's test passphrase")
    res = carol("accept", link, "--name", "alice")
    assert res.code == EXIT_INVITATION
    assert one_line(res) == "kith: error: invitation already used"
    assert names(carol) == []
    assert names(alice) == ["contact-1"]
    # The inviter itself.
    own = alice("invite", "--json").json()["link"]
    res = alice("accept", own, "--name", "me")
    assert res.code == EXIT_INVITATION
    assert "made by this profile" in one_line(res)


# ----------------------------------------------------------------------------- the profile


def test_wrong_passphrase(alice: Profile) -> None:
    res = alice("contacts", passphrase=WRONG)
    assert res.code == EXIT_PASSPHRASE
    assert one_line(res) == "kith: error: wrong passphrase"
    assert res.out == ""


def test_no_profile(kith: Kith, tmp_path: Path) -> None:
    res = kith("--profile", str(tmp_path / "nothing"), "contacts", passphrase=ANY)
    assert res.code == EXIT_ERROR
    assert one_line(res) == (
        f"kith: error: no kith profile at {tmp_path / 'nothing'} (create one with: kith init)"
    )
    assert not (tmp_path / "nothing").exists()


def test_a_directory_that_is_not_a_profile(kith: Kith, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    res = kith("--profile", str(tmp_path / "other"), "contacts", passphrase=ANY)
    assert res.code == EXIT_ERROR
    assert "no kith profile at" in one_line(res)
    assert list((tmp_path / "other").iterdir()) == []


def test_init_never_touches_an_existing_profile(alice: Profile, relay: ThreadRelay) -> None:
    before = {p.name: p.read_bytes() for p in alice.path.iterdir()}
    res = alice.kith("--profile", str(alice.path), "init", "--relay", relay.url,
                     "--insecure-fast-kdf-for-tests", passphrase=ANY)
    assert res.code == EXIT_ERROR
    assert one_line(res) == f"kith: error: a profile already exists at {alice.path}"
    assert {p.name: p.read_bytes() for p in alice.path.iterdir()} == before
    assert alice("contacts").code == EXIT_OK


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "ws://", "ws://host:0", "relay"])
def test_init_refuses_a_bad_relay_address(kith: Kith, tmp_path: Path, url: str) -> None:
    res = kith("--profile", str(tmp_path / "p"), "init", "--relay", url,
               "--insecure-fast-kdf-for-tests", passphrase=ANY)
    assert res.code == EXIT_ERROR
    assert "relay address is not valid" in one_line(res)
    assert not (tmp_path / "p").exists()


def test_init_makes_private_directories(kith: Kith, relay: ThreadRelay, tmp_path: Path) -> None:
    profile = tmp_path / "new" / "deeper" / "profile"
    res = kith("--profile", str(profile), "init", "--relay", relay.url,
               "--insecure-fast-kdf-for-tests", "--json", passphrase=ANY)
    assert res.code == EXIT_OK
    assert "For tests and demos only" in res.err
    assert res.json()["profile"] == str(profile)
    for d in (profile, profile.parent, profile.parent.parent):
        assert d.stat().st_mode & 0o077 == 0, d


def test_a_busy_profile_is_refused_before_the_passphrase(alice: Profile) -> None:
    """Two processes on one profile would fork its ratchets: the second is turned away, and
    not after the person typed a passphrase (no fd is read)."""
    r, w = os.pipe()
    try:
        with unlock.hold_profile(alice.path):
            code = main(["--profile", str(alice.path), "--passphrase-fd", str(r), "contacts"])
        os.write(w, b"\n")
        assert os.read(r, 10) == b"\n"  # nothing was read from the descriptor
    finally:
        os.close(r)
        os.close(w)
    assert code == EXIT_ERROR
    assert alice("contacts").code == EXIT_OK  # released afterwards


def test_passphrase_is_never_an_option(kith: Kith, alice: Profile) -> None:
    for option in ("--passphrase", "--password", "-p"):
        with pytest.raises(SystemExit) as exc:
            main(["--profile", str(alice.path), option, alice.passphrase, "contacts"])
        assert exc.value.code == EXIT_USAGE


# ----------------------------------------------------------------------------- --passphrase-fd


def _fd_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


@pytest.mark.parametrize(
    ("data", "expected", "rest"),
    [
        (b"secret\n", "secret", b""),
        (b"secret\r\nline two\n", "secret", b"line two\n"),
        (b"no newline", "no newline", b""),
        ("p\u00e4ss w\u00f6rd\n".encode(), "p\u00e4ss w\u00f6rd", b""),
    ],
)
def test_passphrase_fd_reads_one_line_and_no_more(data: bytes, expected: str, rest: bytes) -> None:
    fd = _fd_with(data)
    try:
        assert unlock.read_passphrase_fd(fd) == expected
        assert os.read(fd, 100) == rest
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "no passphrase"),
        (b"\n", "no passphrase"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"x" * 5000, "too long"),
    ],
)
def test_passphrase_fd_refuses(data: bytes, why: str) -> None:
    fd = _fd_with(data)
    try:
        with pytest.raises(PassphraseInputError, match=why):
            unlock.read_passphrase_fd(fd)
    finally:
        os.close(fd)


def test_passphrase_fd_that_is_not_open(kith: Kith, alice: Profile) -> None:
    res = kith("--profile", str(alice.path), "--passphrase-fd", "987", "contacts")
    assert res.code == EXIT_ERROR
    assert one_line(res) == (
        "kith: error: cannot read the passphrase from descriptor 987: Bad file descriptor"
    )


def test_default_profile_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert unlock.default_profile() == tmp_path / "kith" / "profile"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert unlock.default_profile() == tmp_path / "home" / ".local" / "share" / "kith" / "profile"


# ----------------------------------------------------------------------------- the relay


def test_relay_down_the_message_waits_in_the_vault(kith: Kith, tmp_path: Path) -> None:
    own = ThreadRelay(tmp_path / "own-relay.db")
    own.start()
    try:
        alice = make_profile(kith, tmp_path / "a", own.url, "pa")
        bob = make_profile(kith, tmp_path / "b", own.url, "pb")
        pair(alice, bob)
        own.stop()

        res = alice("--timeout", "2", "send", "bob", "written while the relay was down")
        assert res.code == EXIT_UNREACHABLE
        assert res.err.splitlines() == [
            "kith: could not reach the relay: 1 item(s) wait in the vault and go out with the "
            "next command that syncs"
        ]
        assert res.out.strip() == "queued"
        res = alice("--timeout", "2", "invite")
        assert res.code == EXIT_UNREACHABLE
        assert "nothing was done" in one_line(res)

        own.start()  # same port, same database
        res = alice("sync", "--json")
        assert res.code == EXIT_OK
        assert res.json()["sync"]["queued"] == 0
        inbox = bob("inbox", "--json").json()["messages"]
        assert [m["text"] for m in inbox] == ["written while the relay was down"]
    finally:
        own.close()


# ----------------------------------------------------------------------------- last resort


def test_a_bug_is_one_line_unless_debugging(
    alice: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(__import__("kith.cli.commands").cli.commands.ONE_SHOT, "contacts", broken)
    res = alice("contacts")
    assert res.code == EXIT_INTERNAL
    assert one_line(res) == (
        "kith: error: internal error (ZeroDivisionError); KITH_DEBUG=1 shows details"
    )
    monkeypatch.setenv("KITH_DEBUG", "1")
    alice.kith.capsys.readouterr()
    code = main(["--profile", str(alice.path), "--passphrase-fd", str(_fd_with(b"x\n")),
                 "contacts"])
    err = alice.kith.capsys.readouterr().err
    assert code == EXIT_PASSPHRASE and "Traceback" in err


def test_usage_errors(kith: Kith) -> None:
    for argv in (["send"], ["nonsense"], ["verify"], ["inbox", "--limit", "3"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == EXIT_USAGE
