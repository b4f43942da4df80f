"""Queue rotation, forgetting a contact, and the SOCKS5 transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kith.client import events as ev
from kith.client.errors import MoveInProgress, NoSuchContact
from kith.client.model import MessageState
from kith.client.service import ClientService
from tests.socks5 import Socks5Proxy

from .conftest import MakeProfile, Relay, eventually, pair, table_rows, wait_for


async def _texts(service: ClientService, contact: str) -> list[str]:
    return [m.text for m in await service.messages(contact, 1000) if not m.outgoing]


async def test_a_contact_moves_to_another_relay_without_losing_a_message(
    make_profile: MakeProfile, relay: Relay, relay2: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    bob_at_alice, _ = await pair(alice, bob, "alice")
    a_events = alice.events()
    await alice.start()
    await bob.start()
    queues_on_1 = relay.count("queues")

    for i in range(5):
        await bob.send("alice", f"before {i}")
    await alice.rotate(bob_at_alice, relay2.url)
    with pytest.raises(MoveInProgress):
        await alice.rotate(bob_at_alice, relay2.url)
    for i in range(5):
        await bob.send("alice", f"during {i}")
    await wait_for(a_events, lambda e: isinstance(e, ev.ContactMoved))
    for i in range(5):
        await bob.send("alice", f"after {i}")
    expected = [f"{w} {i}" for w in ("before", "during", "after") for i in range(5)]
    await eventually(lambda: _has(alice, bob_at_alice.id, 15), timeout=15)
    # The old queue is drained, then deleted on the old relay; the new one lives on relay 2.
    await eventually(lambda: _true(alice.stats.get("queues_retired", 0) == 1), timeout=15)
    await asyncio.sleep(0.3)
    assert await _texts(alice, bob_at_alice.id) == expected
    assert relay.count("queues") == queues_on_1 - 1
    assert relay2.count("queues") == 1
    # Both directions still work, and a second move is allowed now.
    await alice.send(bob_at_alice, "hello from the new place")
    await eventually(lambda: _has(bob, "alice", 1))
    await alice.rotate(bob_at_alice, relay.url)
    await eventually(lambda: _true(alice.stats.get("queues_retired", 0) == 2), timeout=15)
    await bob.send("alice", "home again")
    await eventually(lambda: _has(alice, bob_at_alice.id, 16))
    assert relay2.count("queues") == 0


async def test_a_move_completes_in_one_shot_mode(
    make_profile: MakeProfile, relay: Relay, relay2: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    await bob.send("alice", "in flight to the old queue")
    await alice.rotate(contact, relay2.url)
    await alice.sync(5)  # sends the MOVE, reads the old queue
    await bob.sync(5)  # applies it, acknowledges on the new queue
    await bob.send("alice", "to the new queue")
    await bob.sync(5)
    await alice.sync(5)  # the acknowledgement: the old queue is drained and deleted
    assert await _texts(alice, contact.id) == ["in flight to the old queue", "to the new queue"]
    assert alice.stats.get("queues_retired") == 1
    assert relay2.count("queues") == 1


async def _has(service: ClientService, contact: str, n: int) -> bool:
    return len(await _texts(service, contact)) >= n


async def _true(value: bool) -> bool:
    return value


async def test_forgetting_a_contact_wipes_it_here_and_at_the_relay(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    await bob.send("alice", "hi")
    await bob.sync(5)
    await alice.sync(5)
    queues = relay.count("queues")
    stream = alice.events()
    await alice.forget(contact)
    assert isinstance(await wait_for(stream, lambda e: True), ev.ContactForgotten)
    assert await table_rows(alice) == {
        "contacts": 0, "queues": 0, "invitations": 0, "messages": 0, "outbox": 0,
    }
    assert relay.count("queues") == queues - 1
    with pytest.raises(NoSuchContact):
        await alice.contact(contact.id)
    # Bob's next message has nowhere to go: the relay refuses it for good.
    await bob.send("alice", "are you there?")
    await bob.sync(5)
    assert (await bob.messages("alice"))[-1].state is MessageState.FAILED


@pytest.fixture
async def proxy() -> AsyncIterator[Socks5Proxy]:
    p = Socks5Proxy()
    await p.start()
    yield p
    await p.stop()


async def test_everything_goes_through_a_socks5_proxy_when_given_one(
    make_profile: MakeProfile, proxy: Socks5Proxy
) -> None:
    alice = await make_profile("alice", proxy=proxy.url)
    bob = await make_profile("bob", proxy=proxy.url)
    contact, _ = await pair(alice, bob, "alice")
    await alice.send(contact, "through the proxy")
    await alice.sync(5)
    await bob.sync(5)
    assert await _texts(bob, "alice") == ["through the proxy"]
    assert proxy.connections >= 4  # every connection of both profiles went through it
    assert proxy.refused == 0
