"""Two profiles meet through an invitation and talk, over a real relay on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from kith.client import events as ev
from kith.client.errors import (
    ContactNameTaken,
    InvalidContactName,
    InvalidSetting,
    MessageTooLong,
    NoSuchContact,
    ProfileLocked,
    SafetyNumberMismatch,
)
from kith.client.model import ContactState, MessageState, Verification
from kith.client.service import DEFAULT_DISAPPEARING_SECONDS, EventStream

from .conftest import MakeProfile, Relay, pair, wait_for


async def test_one_shot_handshake_and_messages_both_ways_in_order(
    make_profile: MakeProfile,
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    bob_at_alice, alice_at_bob = await pair(alice, bob, "alice")
    assert bob_at_alice.name == "contact-1"  # the inviter names the newcomer later
    assert alice_at_bob.name == "alice"

    for i in range(3):
        await alice.send(bob_at_alice, f"a{i}")
    before = await alice.messages(bob_at_alice)
    assert [m.state for m in before] == [MessageState.QUEUED] * 3
    assert (await alice.sync(5)).sent == 3
    assert (await bob.sync(5)).received == 3
    got = await bob.messages("alice")
    assert [m.text for m in got] == ["a0", "a1", "a2"]
    assert all(not m.outgoing and m.state is MessageState.UNREAD for m in got)

    for i in range(2):
        await bob.send("alice", f"b{i}")
    await bob.sync(5)  # bob's replies and his receipts for alice's messages
    await alice.sync(5)
    mine = await alice.messages("contact-1")
    assert [(m.outgoing, m.text) for m in mine] == [
        (True, "a0"), (True, "a1"), (True, "a2"), (False, "b0"), (False, "b1"),
    ]
    # Bob's device stored alice's messages and said so.
    assert [m.state for m in mine[:3]] == [MessageState.DELIVERED] * 3
    await bob.sync(5)
    assert [m.state for m in (await bob.messages("alice")) if m.outgoing] == [
        MessageState.DELIVERED
    ] * 2

    # Read state.
    unread = await alice.inbox()
    assert [m.text for m in unread] == ["b0", "b1"]
    assert await alice.inbox() == []
    assert (await alice.contact("contact-1")).unread == 0


async def test_long_running_services_publish_events(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    a_events, b_events = alice.events(), bob.events()
    await alice.start()
    await bob.start()

    invitation = await alice.create_invitation()
    await bob.accept_invitation(invitation.uri, "alice")
    added = await wait_for(a_events, lambda e: isinstance(e, ev.ContactAdded))
    assert isinstance(added, ev.ContactAdded)
    assert added.contact.state is ContactState.ACTIVE
    confirmed = await wait_for(b_events, lambda e: isinstance(e, ev.ContactConfirmed))
    assert isinstance(confirmed, ev.ContactConfirmed)
    assert confirmed.contact.name == "alice"

    sent = await bob.send("alice", "hello")
    received = await wait_for(a_events, lambda e: isinstance(e, ev.MessageReceived))
    assert isinstance(received, ev.MessageReceived)
    assert received.message.text == "hello"
    assert received.contact.id == added.contact.id
    delivered = await wait_for(
        b_events,
        lambda e: isinstance(e, ev.MessageStateChanged) and e.state is MessageState.DELIVERED,
    )
    assert isinstance(delivered, ev.MessageStateChanged)
    assert delivered.message_id == sent.id

    # Many in a row keep their order.
    for i in range(20):
        await alice.send(added.contact, f"m{i}")
    texts: list[str] = []
    while len(texts) < 20:
        e = await wait_for(b_events, lambda e: isinstance(e, ev.MessageReceived))
        assert isinstance(e, ev.MessageReceived)
        texts.append(e.message.text)
    assert texts == [f"m{i}" for i in range(20)]


async def test_every_subscriber_gets_every_later_event(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob)
    first = alice.events()
    await alice.set_disappearing(contact, 60)  # nothing published for this
    await alice.send(contact, "x")
    await alice.sync(5)
    second = alice.events()
    await bob.sync(5)
    await bob.send("inviter", "y")
    await bob.sync(5)
    await alice.sync(5)
    seen_first = [type(e) for e in _drain(first)]
    seen_second = [type(e) for e in _drain(second)]
    assert ev.MessageStateChanged in seen_first  # SENT, before the second subscribed
    assert ev.MessageReceived in seen_first and ev.MessageReceived in seen_second
    assert seen_first[-len(seen_second) :] == seen_second
    await alice.lock()
    assert [e async for e in first] == []  # ends when the profile locks


def _drain(stream: EventStream) -> list[ev.Event]:
    """Every event already waiting in the stream, without waiting for more."""
    out = []
    queue = stream._queue
    while not queue.empty():
        item = queue.get_nowait()
        if item is None:
            break
        out.append(item)
    return out


async def test_safety_numbers_match_and_verify(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    contact, _ = await pair(alice, bob, "alice")
    await pair(alice, carol, "alice")
    a_view = await alice.safety_number(contact)
    b_view = await bob.safety_number("alice")
    assert a_view.digits == b_view.digits
    assert len(a_view.digits) == 60

    stream = alice.events()
    with pytest.raises(SafetyNumberMismatch):
        await alice.verify(contact, "12345 " * 12)
    assert (await alice.contact(contact.id)).verification is Verification.UNVERIFIED
    # A code shown by another contact (carol) does not verify bob.
    c_view = await carol.safety_number("alice")
    with pytest.raises(SafetyNumberMismatch):
        await alice.verify(contact, c_view.qr_payload())

    info = await alice.verify(contact, b_view.display())  # typed digits, with line breaks
    assert info.verification is Verification.VERIFIED
    assert isinstance(await wait_for(stream, lambda e: True), ev.ContactVerified)
    info = await bob.verify("alice", a_view.qr_payload())  # scanned from alice's screen
    assert info.verification is Verification.VERIFIED


async def test_names_are_local_unique_and_clean(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    await pair(alice, bob)
    await pair(alice, carol)
    names = sorted(c.name for c in await alice.contacts())
    assert names == ["contact-1", "contact-2"]
    with pytest.raises(ContactNameTaken):
        await alice.rename("contact-1", "contact-2")
    for bad in ("", "   ", "x" * 65, "bo\x00b", "evil\u202egnp.exe", 7):
        with pytest.raises(InvalidContactName):
            await alice.rename("contact-1", bad)  # type: ignore[arg-type]
    renamed = await alice.rename("contact-1", "  Bob  ")
    assert renamed.name == "Bob"
    assert (await alice.contact(renamed.id)).name == "Bob"  # by id too
    with pytest.raises(NoSuchContact):
        await alice.contact("contact-1")
    with pytest.raises(NoSuchContact):
        await alice.send("nobody", "hi")


async def test_message_rules(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob)
    with pytest.raises(InvalidSetting):
        await alice.send(contact, "")
    with pytest.raises(MessageTooLong) as too_long:
        await alice.send(contact, "é" * 4000)
    fits = "x" * too_long.value.limit
    await alice.send(contact, fits)
    await alice.sync(5)
    await bob.sync(5)
    assert (await bob.messages("inviter"))[-1].text == fits
    assert contact.disappearing_seconds == DEFAULT_DISAPPEARING_SECONDS


async def test_a_locked_profile_refuses_everything(make_profile: MakeProfile, relay: Relay) -> None:
    alice = await make_profile("alice")
    await alice.lock()
    await alice.lock()  # idempotent
    assert alice.locked
    for call in (
        alice.contacts(),
        alice.create_invitation(),
        alice.sync(1),
        alice.send("x", "y"),
    ):
        with pytest.raises(ProfileLocked):
            await call
    with pytest.raises(ProfileLocked):
        alice.events()
    await asyncio.sleep(0)
