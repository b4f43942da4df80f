"""Invitations that must be refused: reused, expired, garbage, forged, our own. Each refusal
is a clear error, and stores nothing (in the vault or at the relay)."""

from __future__ import annotations

import base64

import pytest

from kith.client.errors import (
    ContactNameTaken,
    ExpiredInvitation,
    InvalidInvitation,
    InvalidSetting,
    OwnInvitation,
    UsedInvitation,
)
from kith.client.model import ContactState
from kith.protocol.invitation import Invitation

from .conftest import Clock, MakeProfile, Relay, pair, table_rows

EMPTY = {"contacts": 0, "queues": 0, "invitations": 0, "messages": 0, "outbox": 0}


async def test_a_second_acceptance_is_refused_and_leaves_nothing(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    invitation = await alice.create_invitation()
    await bob.accept_invitation(invitation.uri, "alice")
    await alice.sync(5)  # alice takes bob's acceptance and secures the queue with bob's key
    queues_before = relay.count("queues")

    with pytest.raises(UsedInvitation, match="invitation already used"):
        await carol.accept_invitation(invitation.uri, "alice")
    assert await carol.contacts() == []
    assert await table_rows(carol) == EMPTY
    assert relay.count("queues") == queues_before  # carol's new inbox was deleted again
    # Bob, the first, is unaffected.
    await bob.sync(5)
    assert (await bob.contact("alice")).state is ContactState.ACTIVE
    # The same profile accepting the same link twice is refused locally.
    with pytest.raises(UsedInvitation):
        await bob.accept_invitation(invitation.uri, "alice again")


async def test_two_acceptances_while_the_inviter_is_away_make_one_contact(
    make_profile: MakeProfile,
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    invitation = await alice.create_invitation()
    # The queue is not secured yet, so the relay takes both; alice decides.
    await bob.accept_invitation(invitation.uri, "alice")
    await carol.accept_invitation(invitation.uri, "alice")
    await alice.sync(5)
    assert len(await alice.contacts()) == 1
    # Carol's acceptance reached a queue that is now bob's: it cannot decrypt there.
    dropped = {k: v for k, v in alice.stats.items() if k.startswith("dropped_")}
    assert dropped == {"dropped_undecryptable": 1}
    await bob.sync(5)
    await carol.sync(5)
    assert (await bob.contact("alice")).state is ContactState.ACTIVE
    assert (await carol.contact("alice")).state is ContactState.PENDING  # never confirmed
    # Carol cannot reach alice's queue any more (it is secured with bob's key).
    await carol.send("alice", "hello?")
    await carol.sync(5)
    (message,) = await carol.messages("alice")
    assert message.state.value == "failed"


async def test_expired_invitations_are_refused_on_both_sides(
    make_profile: MakeProfile, clock: Clock, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    queues_at_start = relay.count("queues")
    late = await alice.create_invitation(ttl=3600)
    clock.advance(3601)
    with pytest.raises(ExpiredInvitation, match="invitation expired"):
        await bob.accept_invitation(late.uri, "alice")
    assert await table_rows(bob) == EMPTY
    assert relay.count("queues") == queues_at_start + 1  # only alice's invitation queue
    # The inviter forgets the expired invitation and deletes its queue.
    await alice.sync(5)
    assert await table_rows(alice) == EMPTY
    assert relay.count("queues") == queues_at_start

    # Accepted in time, but the inviter only comes back after the expiry: the invitation
    # and its queue (with the acceptance in it) are gone before anything is read.
    slow = await alice.create_invitation(ttl=3600)
    await carol.accept_invitation(slow.uri, "alice")
    assert relay.count("messages") == 1
    clock.advance(3601)
    await alice.sync(5)
    assert await alice.contacts() == []
    assert relay.count("messages") == 0
    assert relay.count("queues") == queues_at_start + 1  # carol's own inbox only

    with pytest.raises(InvalidSetting):
        await alice.create_invitation(ttl=31 * 86400)


def _garbage_links(valid: str) -> list[str]:
    raw = Invitation.from_uri(valid).to_bytes()
    forged = bytearray(raw)
    forged[-1] ^= 1  # the signature
    swapped = bytearray(raw)
    swapped[30] ^= 1  # a byte inside the relay address
    b32 = lambda b: "kith:invite/" + base64.b32encode(bytes(b)).decode().rstrip("=")  # noqa: E731
    return [
        "",
        "hello",
        "kith:invite/",
        "kith:invite/!!!!",
        "https://example.org/kith:invite/AAAA",
        valid[:-10],
        valid + "AAAA",
        b32(forged),
        b32(swapped),
        b32(bytes(200)),
        "kith:invite/" + "A" * 5000,
        valid.replace("kith:invite/", "kith:invite/ "),
    ]


async def test_garbage_and_forged_links_are_refused_without_touching_the_network(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    valid = (await alice.create_invitation()).uri
    await relay.stop()  # nothing below may need the relay: it fails before any I/O
    for link in _garbage_links(valid):
        with pytest.raises(InvalidInvitation, match="invitation link is not valid"):
            await bob.accept_invitation(link, "alice")
    with pytest.raises(InvalidInvitation):
        await bob.accept_invitation(123, "alice")  # type: ignore[arg-type]
    assert await table_rows(bob) == EMPTY
    # Parsing is tolerant where it is harmless: case and surrounding space.
    Invitation.from_uri("  " + valid.lower() + "\n")


async def test_own_invitation_and_taken_name_are_refused(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    carol = await make_profile("carol")
    await pair(bob, alice, "bob")
    mine = await alice.create_invitation()
    with pytest.raises(OwnInvitation):
        await alice.accept_invitation(mine.uri, "me")
    theirs = await carol.create_invitation()
    with pytest.raises(ContactNameTaken):
        await alice.accept_invitation(theirs.uri, "bob")
    rows = await table_rows(alice)
    assert rows["contacts"] == 1 and rows["invitations"] == 1


async def test_an_acceptance_waits_in_the_outbox_while_the_inviters_relay_is_down(
    make_profile: MakeProfile, relay: Relay, relay2: Relay
) -> None:
    alice = await make_profile("alice", relay_url=relay2.url)  # alice lives on relay 2
    bob = await make_profile("bob")  # bob on relay 1
    invitation = await alice.create_invitation()
    await relay2.stop()
    pending = await bob.accept_invitation(invitation.uri, "alice")
    assert pending.state is ContactState.PENDING
    rows = await table_rows(bob)
    assert rows["outbox"] == 1 and rows["contacts"] == 1
    assert (await bob.sync(3)).unreachable == 1  # still down: nothing lost, nothing sent
    await relay2.start()
    assert (await bob.sync(5)).sent == 1
    await alice.sync(5)
    await bob.sync(5)
    assert (await bob.contact("alice")).state is ContactState.ACTIVE
    assert len(await alice.contacts()) == 1
