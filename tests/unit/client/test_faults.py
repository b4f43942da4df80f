"""Faults: relays that die and come back, clients that crash mid-send, garbage from peers and
relays, damaged vault files. After recovery every message arrives exactly once, in order;
bad input is dropped (and counted) without storing anything or crashing."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from kith.client import events as ev
from kith.client.errors import ProfileCorrupt
from kith.client.model import MessageState
from kith.client.relay import RelayClient, RelayError, RelayProtocolError, RelayUnreachable
from kith.client.service import ClientService
from kith.client.store import ClientStore, QueueKind
from kith.crypto.signing import SigningKey
from kith.crypto.sqlstore import SqlStoreError
from kith.errors import KithError
from kith.protocol import relay as p
from kith.protocol.invitation import Invitation
from kith.relay.store.base import Limits
from kith.vault import NotAVault, WrongPassphrase

from .conftest import (
    FAST,
    PASSPHRASE,
    Clock,
    MakeProfile,
    Relay,
    eventually,
    pair,
    reopen,
    table_rows,
    wait_for,
)


async def _texts(service: ClientService, contact: str, *, outgoing: bool = False) -> list[str]:
    return [m.text for m in await service.messages(contact, 1000) if m.outgoing == outgoing]


# --------------------------------------------------------------------------- relay restarts


async def test_relay_restart_mid_conversation_loses_and_repeats_nothing(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    bob_at_alice, _ = await pair(alice, bob, "alice")
    b_events = bob.events()
    await alice.start()
    await bob.start()
    for i in range(5):
        await alice.send(bob_at_alice, f"m{i}")
    await eventually(lambda: _count(bob, "alice", 5))

    await relay.stop()  # mid-conversation: clients see their connections drop
    await wait_for(
        b_events,
        lambda e: isinstance(e, ev.ConnectionChanged) and e.state.value == "disconnected",
    )
    for i in range(5, 10):
        await alice.send(bob_at_alice, f"m{i}")  # queued in the vault while the relay is down
    for i in range(3):
        await bob.send("alice", f"r{i}")
    assert all(m.state is MessageState.QUEUED for m in (await alice.messages(bob_at_alice))[5:])

    await relay.start()  # same port, same database
    await eventually(lambda: _count(bob, "alice", 10), timeout=15)
    await eventually(lambda: _count(alice, bob_at_alice.id, 3), timeout=15)
    await asyncio.sleep(0.5)  # any duplicate would arrive now
    assert await _texts(bob, "alice") == [f"m{i}" for i in range(10)]
    assert await _texts(alice, bob_at_alice.id) == ["r0", "r1", "r2"]
    await eventually(lambda: _all_delivered(alice, bob_at_alice.id), timeout=15)


async def _count(service: ClientService, contact: str, n: int) -> bool:
    return len(await _texts(service, contact)) >= n


async def _all_delivered(service: ClientService, contact: str) -> bool:
    return all(
        m.state is MessageState.DELIVERED
        for m in await service.messages(contact, 1000)
        if m.outgoing
    )


# --------------------------------------------------------------------------- client crashes


async def test_a_client_that_dies_before_sending_sends_after_restart(
    make_profile: MakeProfile, tmp_path: pathlib.Path, clock: Clock
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    for i in range(3):
        await alice.send(contact, f"m{i}")
    # Dies with the messages in the vault's outbox and nothing sent.
    alice = await reopen(alice, tmp_path / "alice", clock)
    try:
        assert [m.state for m in await alice.messages(contact.id)] == [MessageState.QUEUED] * 3
        assert (await alice.sync(5)).sent == 3
    finally:
        await alice.lock()
    await bob.sync(5)
    assert await _texts(bob, "alice") == ["m0", "m1", "m2"]


async def test_a_client_that_dies_after_the_relay_took_a_block_resends_it_once(
    make_profile: MakeProfile,
    tmp_path: pathlib.Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst moment: the relay stored the block, the client died before it could note
    that. After restart it sends the same bytes again; the recipient's replay window drops
    the copy, so the message shows once."""
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    await alice.send(contact, "once")
    await alice.send(contact, "twice?")

    real = ClientStore.delete_outbox
    calls = 0

    def crash_on_second(self: ClientStore, outbox_id: int) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SqlStoreError("the process died here")
        return real(self, outbox_id)

    monkeypatch.setattr(ClientStore, "delete_outbox", crash_on_second)
    with pytest.raises(SqlStoreError):
        await alice.sync(5)
    monkeypatch.setattr(ClientStore, "delete_outbox", real)
    alice = await reopen(alice, tmp_path / "alice", clock)
    try:
        states = [m.state for m in await alice.messages(contact.id)]
        assert states == [MessageState.SENT, MessageState.QUEUED]
        assert (await alice.sync(5)).sent == 1  # the same block again
    finally:
        await alice.lock()
    await bob.sync(5)
    assert await _texts(bob, "alice") == ["once", "twice?"]
    assert bob.stats["dropped_undecryptable"] == 1  # the copy, refused as a replay
    assert (await table_rows(bob))["messages"] == 2


async def test_a_recipient_that_dies_before_acknowledging_stores_once(
    make_profile: MakeProfile,
    tmp_path: pathlib.Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    relay: Relay,
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    for i in range(4):
        await alice.send(contact, f"m{i}")
    await alice.sync(5)

    async def no_ack(url: str, msg: p.Msg) -> None:
        return None  # died after committing, before the ACK left

    monkeypatch.setattr(bob, "_ack", no_ack)
    await bob.sync(5)
    assert await _texts(bob, "alice") == ["m0", "m1", "m2", "m3"]
    held = relay.count("messages")  # alice's four, and bob's four receipts for her
    assert held == 8
    bob = await reopen(bob, tmp_path / "bob", clock)
    try:
        await bob.sync(5)  # redelivered: each fails the replay window and is acked
        assert await _texts(bob, "alice") == ["m0", "m1", "m2", "m3"]
        assert bob.stats["dropped_undecryptable"] == 4
        assert relay.count("messages") == held - 4
    finally:
        await bob.lock()


# --------------------------------------------------------------------------- garbage in


async def test_garbage_blocks_are_dropped_acknowledged_and_counted(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    invitation = await alice.create_invitation()
    # Anyone holding the link can write to the invitation's queue until it is used.
    sender_id = Invitation.from_uri(invitation.uri).sender_id
    async with await RelayClient.connect(relay.url) as raw:
        size = raw.block_size
        for body in (bytes(size), os.urandom(size), b"\x01\x00\x00\x10" + os.urandom(size - 4)):
            await raw.send(sender_id, body)
    await alice.sync(5)
    assert alice.stats["dropped_undecryptable"] == 3
    assert relay.count("messages") == 0  # acknowledged: never delivered again
    assert (await table_rows(alice))["contacts"] == 0
    # The invitation still works for the genuine acceptor.
    _, at_bob = await _accept_and_sync(alice, bob, invitation.uri)
    assert at_bob.name == "alice"

    # A malicious relay slips garbage into an established conversation: dropped, and the
    # conversation goes on.
    (bob_at_alice,) = await alice.contacts()
    channel = bob._channels[at_bob.id]
    assert relay.server is not None
    await relay.server.store.put_message(
        channel.inbox.sender_id,
        os.urandom(16),
        os.urandom(size),
        int(time.time()),
        Limits(),
        channel.inbox_sender_key,
    )
    await alice.send(bob_at_alice, "still here")
    await alice.sync(5)
    await bob.sync(5)
    assert bob.stats["dropped_undecryptable"] == 1
    assert await _texts(bob, "alice") == ["still here"]


async def _accept_and_sync(
    inviter: ClientService, acceptor: ClientService, uri: str
) -> tuple[object, object]:
    theirs = await acceptor.accept_invitation(uri, "alice")
    await inviter.sync(5)
    await acceptor.sync(5)
    return None, await acceptor.contact(theirs.id)


async def test_a_message_for_an_unknown_queue_is_dropped(make_profile: MakeProfile) -> None:
    alice = await make_profile("alice")
    before = await table_rows(alice)
    msg = p.Msg(os.urandom(16), os.urandom(16), 0, bytes(4096))
    await alice._on_message(alice.relay_url, msg)
    assert alice.stats["dropped_unknown_queue"] == 1
    assert await table_rows(alice) == before


# --------------------------------------------------------------------------- garbage relays


class FakeRelay:
    """A WebSocket server on 127.0.0.1 that speaks garbage in a chosen way."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        if self.mode == "bad-hello":
            await ws.send(b"\x01\x85garbage")
        else:
            hello = p.Hello(p.VERSION, p.VERSION, os.urandom(32), 4096, 64)
            await ws.send(p.encode(hello))
        async for _ in ws:
            if self.mode == "garbage-replies":
                await ws.send(os.urandom(40))
            elif self.mode == "text-replies":
                await ws.send("hello")


@pytest.fixture(params=["bad-hello", "garbage-replies", "text-replies"])
async def fake_relay(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeRelay, str]]:
    fake = FakeRelay(request.param)
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield fake, f"ws://127.0.0.1:{port}"


async def test_a_relay_that_answers_garbage_gets_a_clear_error(
    make_profile: MakeProfile, fake_relay: tuple[FakeRelay, str]
) -> None:
    fake, url = fake_relay
    alice = await make_profile("alice", relay_url=url)
    with pytest.raises(RelayError) as err:
        await alice.create_invitation()
    assert isinstance(err.value, RelayUnreachable | RelayProtocolError)
    assert str(err.value)  # one line a person can read
    assert fake.connections >= 1
    assert await table_rows(alice) == {
        "contacts": 0, "queues": 0, "invitations": 0, "messages": 0, "outbox": 0,
    }
    result = await alice.sync(3)  # never raises for a bad relay
    # A relay that cannot even greet is unreachable; one that greets and is asked nothing
    # has done nothing wrong yet.
    assert result.unreachable == (1 if fake.mode == "bad-hello" else 0)
    assert not alice.locked


# --------------------------------------------------------------------------- damaged files


async def test_a_damaged_vault_gives_a_clear_error_on_unlock(
    make_profile: MakeProfile, tmp_path: pathlib.Path
) -> None:
    alice = await make_profile("alice")
    await alice.lock()
    path = tmp_path / "alice"
    with pytest.raises(WrongPassphrase):
        await ClientService.unlock(path, "not the passphrase", options=FAST)
    for db in ("db0", "db1"):  # which one is the profile is random: damage both
        data = bytearray((path / db).read_bytes())
        data[100:200] = os.urandom(100)  # inside the first page: schema and header
        (path / db).write_bytes(bytes(data))
    with pytest.raises(ProfileCorrupt, match="damaged"):
        await ClientService.unlock(path, PASSPHRASE, options=FAST)
    (path / "keys").write_bytes(b"short")
    with pytest.raises(NotAVault):
        await ClientService.unlock(path, PASSPHRASE, options=FAST)
    with pytest.raises(KithError):
        await ClientService.unlock(tmp_path / "nowhere", PASSPHRASE, options=FAST)


async def test_damage_found_later_is_a_clear_error_not_a_crash(
    make_profile: MakeProfile, tmp_path: pathlib.Path
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob)
    for i in range(30):  # enough rows for pages beyond the first ones
        await alice.send(contact, f"message {i} " + "x" * 3000)
    await alice.lock()
    path = tmp_path / "alice"
    for db in ("db0", "db1"):
        data = bytearray((path / db).read_bytes())
        if len(data) > 12 * 4096:
            start = len(data) - 3 * 4096
            data[start : start + 4096] = os.urandom(4096)
        (path / db).write_bytes(bytes(data))
    # Unlock deletes expired messages, which reads the damaged page: found at once. Either
    # way it is one clear error, never a crash.
    try:
        service = await ClientService.unlock(path, PASSPHRASE, options=FAST)
    except ProfileCorrupt as exc:
        assert "damaged" in str(exc)
        return
    try:
        with pytest.raises(KithError):
            await service.messages(contact.id, 10_000)
    finally:
        await service.lock()


async def test_a_message_the_relay_lost_is_asked_for_and_sent_again_once(
    make_profile: MakeProfile, relay: Relay
) -> None:
    alice = await make_profile("alice")
    bob = await make_profile("bob")
    contact, _ = await pair(alice, bob, "alice")
    await alice.send(contact, "lost on the way")
    await alice.sync(5)
    # The relay loses it: someone takes it off bob's queue behind his back.
    (queue,) = [q for q in bob._queues.values() if q.kind is QueueKind.CONTACT]
    async with await RelayClient.connect(relay.url) as raw:
        await raw.subscribe(queue.recipient_id, SigningKey(queue.auth_seed))
        taken = await raw.next_message(timeout=5)
        await raw.ack(queue.recipient_id, taken.msg_id)
    await alice.send(contact, "arrives")
    await alice.sync(5)
    await bob.sync(5)  # "arrives" shows a gap before it; once quiet, bob asks again
    assert bob.stats["resend_requests"] == 1
    await alice.sync(5)  # the text again, with its original message id
    assert alice.stats["resent"] == 1
    await bob.sync(5)
    assert await _texts(bob, "alice") == ["arrives", "lost on the way"]
    await alice.sync(5)
    assert all(m.state is MessageState.DELIVERED for m in await alice.messages(contact))
