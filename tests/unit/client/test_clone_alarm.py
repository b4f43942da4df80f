"""A copy of a profile subscribing elsewhere is noticed: the relay's END becomes an alarm."""

from __future__ import annotations

import asyncio

import pytest

from kith.client import events as ev
from kith.client.relay import RelayClient
from kith.client.store import QueueKind
from kith.crypto.signing import SigningKey

from .conftest import MakeProfile, Relay, pair, wait_for


async def test_another_subscriber_to_our_inbox_raises_an_alarm_and_we_keep_receiving(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    bob_at_alice, _ = await pair(alice, bob, "alice")
    stream = alice.events()
    await alice.start()
    inbox = next(q for q in alice._queues.values() if q.kind is QueueKind.CONTACT)

    # The captor runs a copy of alice's profile: it holds her inbox key and subscribes.
    async with await RelayClient.connect(relay.url) as clone:
        await clone.subscribe(inbox.recipient_id, SigningKey(inbox.auth_seed))
        alarm = await wait_for(stream, lambda e: isinstance(e, ev.SubscriptionTakenOver))
        assert isinstance(alarm, ev.SubscriptionTakenOver)
        assert alarm.contact is not None and alarm.contact.id == bob_at_alice.id
        assert alice.stats["subscriptions_taken_over"] == 1
        # Alice took the subscription back: the clone is told, and bob's next message
        # reaches alice.
        assert await clone.ended.get() == inbox.recipient_id
    await bob.send("alice", "still here")
    await bob.sync(5)
    got = await wait_for(stream, lambda e: isinstance(e, ev.MessageReceived))
    assert isinstance(got, ev.MessageReceived) and got.message.text == "still here"
    await alice.lock()


async def test_a_clone_that_keeps_resubscribing_does_not_start_a_tug_of_war(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    await pair(alice, bob, "alice")
    stream = alice.events()
    await alice.start()
    inbox = next(q for q in alice._queues.values() if q.kind is QueueKind.CONTACT)
    key = SigningKey(inbox.auth_seed)
    async with await RelayClient.connect(relay.url) as clone:
        await clone.subscribe(inbox.recipient_id, key)
        await wait_for(stream, lambda e: isinstance(e, ev.SubscriptionTakenOver))
        assert await clone.ended.get() == inbox.recipient_id  # alice took it back once
        await clone.subscribe(inbox.recipient_id, key)  # the clone insists
        await wait_for(stream, lambda e: isinstance(e, ev.SubscriptionTakenOver))
        # Alice raises the alarm again but does not fight: the clone keeps the subscription.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(clone.ended.get(), 1.0)
    assert alice.stats["subscriptions_taken_over"] == 2
    await alice.lock()
