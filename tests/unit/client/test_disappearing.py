"""Disappearing messages: on by default, per contact, and really gone from the file.

The decisive test reads the closed SQLCipher file page by page with the profile's key, as an
examiner who forced the passphrase out of someone would, and finds no trace of an expired
message; the same search finds it while the message lives (so the search works)."""

from __future__ import annotations

import os
import pathlib

import pytest

from kith.client import events as ev
from kith.client.errors import InvalidSetting
from kith.client.model import Verification
from kith.client.service import DEFAULT_DISAPPEARING_SECONDS
from kith.crypto.interfaces import IdentityKeys
from kith.protocol.safety import ContactVerification, KeyChangedError
from tests.unit.vault.helpers import grant_of

from .conftest import PASSPHRASE, Clock, MakeProfile, pair, wait_for
from .sqlcipher_pages import db_key, db_path, plaintext_contains


def _profile_file(directory: pathlib.Path) -> tuple[pathlib.Path, bytes]:
    _, grant = grant_of(directory, PASSPHRASE)
    return db_path(directory, grant), db_key(grant)


async def test_an_expired_message_is_gone_from_the_database_files(
    make_profile: MakeProfile, tmp_path: pathlib.Path, clock: Clock
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    await alice.set_disappearing(contact, 60)
    await bob.set_disappearing("alice", 60)
    marker = "kith-marker-" + os.urandom(8).hex()
    keep = "kith-keeper-" + os.urandom(8).hex()
    await alice.send(contact, marker)
    await alice.sync(5)
    await bob.sync(5)
    await bob.set_disappearing("alice", None)  # later messages stay
    await alice.set_disappearing(contact, None)
    await alice.send(contact, keep)
    await alice.sync(5)
    await bob.sync(5)
    assert [m.text for m in await bob.messages("alice")] == [marker, keep]

    files = {name: _profile_file(tmp_path / name) for name in ("alice", "bob")}
    for path, key in files.values():  # control: while it lives, the search finds it
        assert plaintext_contains(path, key, marker.encode())

    b_events = bob.events()
    clock.advance(61)
    assert await alice.sweep() == 1
    assert await bob.sweep() == 1
    expired = await wait_for(b_events, lambda e: isinstance(e, ev.MessagesExpired))
    assert isinstance(expired, ev.MessagesExpired) and expired.count == 1
    assert [m.text for m in await bob.messages("alice")] == [keep]
    await alice.lock()
    await bob.lock()

    for name, (path, key) in files.items():
        directory = tmp_path / name
        for f in directory.iterdir():  # closed: nothing beside the databases, no journal
            assert marker.encode() not in f.read_bytes()
        assert sorted(f.name for f in directory.iterdir()) == ["db0", "db1", "keys"]
        assert not plaintext_contains(path, key, marker.encode()), name  # not even freed
        assert plaintext_contains(path, key, keep.encode()), name


async def test_timers_default_to_a_week_and_follow_each_contact(
    make_profile: MakeProfile, clock: Clock
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    to_bob, _ = await pair(alice, bob)
    assert to_bob.disappearing_seconds == DEFAULT_DISAPPEARING_SECONDS
    first = await alice.send(to_bob, "first")
    assert first.expires_at is not None
    assert (first.expires_at - first.stored_at).total_seconds() == DEFAULT_DISAPPEARING_SECONDS

    await alice.set_disappearing(to_bob, None)
    forever = await alice.send(to_bob, "forever")
    assert forever.expires_at is None
    # A shorter timer shortens what is already stored, "off" included.
    await alice.set_disappearing(to_bob, 3600)
    stored = await alice.messages(to_bob)
    assert all(
        m.expires_at is not None and (m.expires_at - m.stored_at).total_seconds() == 3600
        for m in stored
    )
    for bad in (0, 9, -1, 400 * 86400, True, "60", 1.5):
        with pytest.raises(InvalidSetting):
            await alice.set_disappearing(to_bob, bad)  # type: ignore[arg-type]

    await alice.set_default_disappearing(None)
    to_carol, _ = await pair(alice, carol)
    assert to_carol.disappearing_seconds is None
    assert (await alice.contact(to_bob.id)).disappearing_seconds == 3600


async def test_the_background_sweeper_deletes_without_being_asked(
    make_profile: MakeProfile, clock: Clock
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob)
    await alice.set_disappearing(contact, 10)
    await alice.send(contact, "soon gone")
    stream = alice.events()
    await alice.start()
    clock.advance(11)
    event = await wait_for(stream, lambda e: isinstance(e, ev.MessagesExpired), timeout=5)
    assert isinstance(event, ev.MessagesExpired)
    assert event.contact_id == contact.id
    assert await alice.messages(contact) == []


async def test_a_key_change_blocks_sending_until_acknowledged(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob)
    number = await bob.safety_number("inviter")
    await alice.verify(contact, number.digits)
    # What the vault knew of bob's keys no longer matches the keys his channel uses (a
    # re-keyed relationship, or state restored from elsewhere).
    old = ContactVerification(IdentityKeys(os.urandom(32), os.urandom(32))).to_bytes()
    await alice._db(lambda: alice._store.save_verification(contact.id, old))
    stream = alice.events()
    with pytest.raises(KeyChangedError):
        await alice.send(contact, "hello")
    changed = await wait_for(stream, lambda e: isinstance(e, ev.KeyChanged))
    assert isinstance(changed, ev.KeyChanged)
    assert changed.contact.verification is Verification.CHANGED
    with pytest.raises(KeyChangedError):
        await alice.verify(contact, number.digits)  # the warning cannot be skipped
    acknowledged = await alice.acknowledge_key_change(contact)
    assert acknowledged.verification is Verification.UNVERIFIED
    await alice.send(contact, "hello")
    assert (await alice.verify(contact, number.digits)).verification is Verification.VERIFIED
