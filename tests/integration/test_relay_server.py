"""The relay server over real WebSockets on 127.0.0.1, in-process, with the memory store."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kith.client.relay import RelayClient, RelayRefused
from kith.crypto.signing import SigningKey
from kith.errors import StoreUnavailable
from kith.protocol import relay as p
from kith.relay.core import RelayConfig
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.base import Limits
from kith.relay.store.memory import MemoryStore
from kith.relay.store.sqlite import SQLiteStore

BLOCK = 512


@pytest.fixture
async def relay() -> AsyncIterator[RelayServer]:
    cfg = ServerConfig(
        port=0,
        metrics_port=0,
        relay=RelayConfig(block_size=BLOCK, window=4, limits=Limits(max_messages=20)),
    )
    server = RelayServer(MemoryStore(), cfg)
    await server.start()
    yield server
    await server.stop()


def url(relay: RelayServer) -> str:
    return f"ws://127.0.0.1:{relay.port}"


def block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (BLOCK // 4)


async def queue(client: RelayClient) -> tuple[SigningKey, bytes, bytes]:
    key = SigningKey.generate()
    rid, sid = await client.create_queue(key)
    return key, rid, sid


async def test_send_receive_ack_in_order_with_window(relay: RelayServer) -> None:
    async with await RelayClient.connect(url(relay)) as alice, \
            await RelayClient.connect(url(relay)) as bob:
        key, rid, sid = await queue(alice)
        # Pipelined sends before anyone subscribes: more than the window of 4.
        await asyncio.gather(*(bob.send(sid, block(i)) for i in range(10)))
        await alice.subscribe(rid, key)
        got = []
        for _ in range(10):
            m = await alice.next_message(timeout=5)
            got.append(int.from_bytes(m.body[:4], "big"))
            await alice.ack(rid, m.msg_id)
        assert got == list(range(10))
        # Acknowledged means deleted: a fresh subscription sees nothing.
    async with await RelayClient.connect(url(relay)) as again:
        await again.subscribe(rid, key)
        with pytest.raises(TimeoutError):
            await again.next_message(timeout=0.3)


async def test_unacked_messages_are_redelivered_to_the_next_subscription(
    relay: RelayServer,
) -> None:
    async with await RelayClient.connect(url(relay)) as alice:
        key, rid, sid = await queue(alice)
        await alice.send(sid, block(1))
        await alice.subscribe(rid, key)
        first = await alice.next_message(timeout=5)
    async with await RelayClient.connect(url(relay)) as alice2:
        await alice2.subscribe(rid, key)
        again = await alice2.next_message(timeout=5)
        assert again.msg_id == first.msg_id and again.body == first.body


async def test_secured_queue_refuses_unproven_senders(relay: RelayServer) -> None:
    async with await RelayClient.connect(url(relay)) as alice, \
            await RelayClient.connect(url(relay)) as bob, \
            await RelayClient.connect(url(relay)) as mallory:
        key, rid, sid = await queue(alice)
        await mallory.send(sid, block(0))  # unsecured: anyone with the sender id may send
        bob_key = SigningKey.generate()
        await alice.secure(rid, key, bob_key.public_key)
        with pytest.raises(RelayRefused) as info:
            await mallory.send(sid, block(1))  # the same connection, after KEY: refused
        assert info.value.code == p.ErrorCode.AUTH
        with pytest.raises(RelayRefused):
            await mallory.sender_auth(sid, SigningKey.generate())
        await bob.sender_auth(sid, bob_key)
        await bob.send(sid, block(2))
        # A second, different KEY is refused: the owner cannot be tricked into swapping it.
        with pytest.raises(RelayRefused):
            await alice.secure(rid, key, SigningKey.generate().public_key)


async def test_only_the_owner_can_subscribe_or_delete(relay: RelayServer) -> None:
    async with await RelayClient.connect(url(relay)) as alice, \
            await RelayClient.connect(url(relay)) as mallory:
        key, rid, sid = await queue(alice)
        thief = SigningKey.generate()
        for attempt in (mallory.subscribe(rid, thief), mallory.delete_queue(rid, thief)):
            with pytest.raises(RelayRefused) as info:
                await attempt
            assert info.value.code == p.ErrorCode.AUTH
        # ...and the queue still works.
        await alice.send(sid, block(5))
        await alice.subscribe(rid, key)
        assert (await alice.next_message(timeout=5)).body == block(5)
        await alice.delete_queue(rid, key)
        with pytest.raises(RelayRefused):
            await alice.send(sid, block(6))


async def test_second_subscriber_takes_over(relay: RelayServer) -> None:
    async with await RelayClient.connect(url(relay)) as a1, \
            await RelayClient.connect(url(relay)) as a2:
        key, rid, sid = await queue(a1)
        await a1.subscribe(rid, key)
        await a2.subscribe(rid, key)
        assert await asyncio.wait_for(a1.ended.get(), 5) == rid
        await a1.send(sid, block(9))
        assert (await a2.next_message(timeout=5)).body == block(9)


async def test_quota_is_a_typed_refusal_and_keeps_stored_messages(
    relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with await RelayClient.connect(url(relay)) as alice:
        key, rid, sid = await queue(alice)
        for i in range(20):
            await alice.send(sid, block(i))
        with pytest.raises(RelayRefused) as info:
            await alice.send(sid, block(99))
        assert info.value.code == p.ErrorCode.QUOTA
        await alice.subscribe(rid, key)
        bodies = [(await alice.next_message(timeout=5)).body for _ in range(4)]
        assert bodies == [block(i) for i in range(4)]
    # An expected refusal is not an internal error and leaves nothing in the log.
    assert relay.counters.values.get("internal_errors", 0) == 0
    assert not [r for r in caplog.records if r.name.startswith("kith.relay")]


async def test_garbage_gets_typed_errors_and_the_connection_survives(relay: RelayServer) -> None:
    async with connect(url(relay), compression=None) as ws:
        hello = p.decode_reply(await ws.recv())  # type: ignore[arg-type]
        assert isinstance(hello, p.Hello) and hello.block_size == BLOCK
        cases = [
            (b"\x01\x06\x00\x00\x00\x01" + b"s" * 16 + b"x" * 10, p.ErrorCode.BLOCK_SIZE),
            (b"\x09\x01\x00\x00\x00\x02", p.ErrorCode.VERSION),
            (b"\x01", p.ErrorCode.MALFORMED),
            (b"\x01\x03\x00\x00\x00\x04" + bytes(80), p.ErrorCode.AUTH),
            (b"\x01\x01\x00\x00\x00\x05" + bytes(2 * BLOCK), p.ErrorCode.TOO_LARGE),
        ]
        for frame, code in cases:
            await ws.send(frame)
            reply = p.decode_reply(await ws.recv(), BLOCK)  # type: ignore[arg-type]
            assert isinstance(reply, p.Err) and reply.code == code
        await ws.send("text frame")
        reply = p.decode_reply(await ws.recv(), BLOCK)  # type: ignore[arg-type]
        assert isinstance(reply, p.Err) and reply.code == p.ErrorCode.MALFORMED
        await ws.send(p.encode(p.Ping(77)))
        assert p.decode_reply(await ws.recv(), BLOCK) == p.Pong(77)  # type: ignore[arg-type]
        # Beyond twice the largest frame the WebSocket layer closes without reading.
        await ws.send(bytes(4 * BLOCK + 200))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_metrics_are_aggregate_only(relay: RelayServer) -> None:
    async with await RelayClient.connect(url(relay)) as alice:
        _key, rid, sid = await queue(alice)
        await alice.send(sid, block(1))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.metrics_port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    assert text.startswith("HTTP/1.0 200 OK")
    assert "kith_relay_messages_stored_total 1" in text
    assert "kith_relay_queues_created_total 1" in text
    for secret in (rid.hex(), sid.hex(), "127.0.0.1"):
        assert secret not in text


class FlakyReads(MemoryStore):
    """A memory store whose first few reads of pending messages fail, as Redis does while it
    restarts."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def pending(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("down")
        return await super().pending(*args, **kwargs)


async def test_a_failed_fetch_is_retried_without_any_new_hint() -> None:
    store = FlakyReads(failures=2)
    server = RelayServer(store, ServerConfig(port=0, relay=RelayConfig(block_size=BLOCK)))
    await server.start()
    try:
        async with await RelayClient.connect(url(server)) as alice:
            key, rid, sid = await queue(alice)
            await alice.send(sid, block(7))  # stored before anyone subscribes: no hint later
            await alice.subscribe(rid, key)  # its fetch fails, twice
            assert (await alice.next_message(timeout=10)).body == block(7)
    finally:
        await server.stop()


async def test_deleting_a_queue_ends_its_subscription_on_another_connection(
    relay: RelayServer,
) -> None:
    async with await RelayClient.connect(url(relay)) as holder, \
            await RelayClient.connect(url(relay)) as owner:
        key, rid, _sid = await queue(owner)
        await holder.subscribe(rid, key)
        await owner.delete_queue(rid, key)
        assert await asyncio.wait_for(holder.ended.get(), 5) == rid
    assert relay.counters.values.get("fetch_failed", 0) == 0


async def test_thousands_of_pipelined_commands_are_all_answered_under_the_inflight_cap() -> None:
    cfg = ServerConfig(
        port=0,
        relay=RelayConfig(block_size=BLOCK, limits=Limits(max_messages=5000)),
    )
    server = RelayServer(MemoryStore(), cfg)
    await server.start()
    try:
        async with await RelayClient.connect(url(server)) as client:
            key, rid, sid = await queue(client)
            await asyncio.gather(*(client.send(sid, block(i)) for i in range(3000)))
            await client.subscribe(rid, key)
            first = await client.next_message(timeout=10)
            assert first.body == block(0)
        assert server.counters.values["messages_stored"] == 3000
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- WebSocket layer


async def test_a_fragmented_message_is_reassembled(relay: RelayServer) -> None:
    async with connect(url(relay), compression=None) as ws:
        await ws.recv()  # HELLO
        frame = p.encode(p.Ping(41))
        await ws.send([frame[:2], frame[2:4], frame[4:]])
        assert p.decode_reply(await ws.recv(), BLOCK) == p.Pong(41)  # type: ignore[arg-type]
        # The connection goes on normally afterwards.
        await ws.send(p.encode(p.Ping(42)))
        assert p.decode_reply(await ws.recv(), BLOCK) == p.Pong(42)  # type: ignore[arg-type]


async def test_a_fragmented_message_over_the_limit_closes_with_1009(relay: RelayServer) -> None:
    async with connect(url(relay), compression=None) as ws:
        await ws.recv()
        piece = bytes(2 * BLOCK)  # each fragment is allowed; together they are not
        await ws.send([piece, piece, piece])
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_connections_past_the_limit_are_refused_with_1013() -> None:
    server = RelayServer(MemoryStore(), ServerConfig(port=0, max_connections=2))
    await server.start()
    try:
        async with connect(url(server)) as a, connect(url(server)) as b:
            await a.recv()
            await b.recv()
            async with connect(url(server)) as c:
                with pytest.raises(ConnectionClosed) as info:
                    await c.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 1013
            # The refused connection was never counted: the two first still work.
            await a.send(p.encode(p.Ping(1)))
            assert p.decode_reply(await a.recv(), 4096) == p.Pong(1)  # type: ignore[arg-type]
        assert server.counters.values["connections_refused"] == 1
    finally:
        await server.stop()


async def test_stopping_the_relay_closes_connections_with_1001() -> None:
    server = RelayServer(MemoryStore(), ServerConfig(port=0))
    await server.start()
    async with connect(url(server)) as ws:
        await ws.recv()
        await server.stop()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_a_client_close_is_answered_and_releases_its_subscription(
    relay: RelayServer,
) -> None:
    client = await RelayClient.connect(url(relay))
    key, rid, _sid = await queue(client)
    await client.subscribe(rid, key)
    await client.close()
    for _ in range(100):
        if "kith_relay_subscriptions 0" in await relay.render_metrics():
            break
        await asyncio.sleep(0.02)
    assert "kith_relay_subscriptions 0" in await relay.render_metrics()
    assert "kith_relay_connections_open 0" in await relay.render_metrics()


async def test_metrics_count_messages_never_written(tmp_path: Any) -> None:
    """With SQLite, a message acknowledged while staged is counted as never written; one left
    waiting is counted as written."""
    store = SQLiteStore(tmp_path / "relay.db", stage_seconds=0.5)
    server = RelayServer(store, ServerConfig(port=0, metrics_port=0,
                                             relay=RelayConfig(block_size=BLOCK)))
    await server.start()
    try:
        async with await RelayClient.connect(url(server)) as alice:
            key, rid, sid = await queue(alice)
            await alice.subscribe(rid, key)
            await asyncio.sleep(0.2)  # the subscription's first read is over
            # Pushed at once, before it is written; its OK waits for the write or the ACK.
            sending = asyncio.ensure_future(alice.send(sid, block(1)))
            got = await alice.next_message(timeout=5)
            await alice.ack(rid, got.msg_id)
            await asyncio.wait_for(sending, 0.4)  # answered by the ACK, not after 0.5 s
            _key2, _rid2, other_sid = await queue(alice)
            await alice.send(other_sid, block(2))  # nobody subscribed: written when due
        metrics = await server.render_metrics()
        assert "kith_relay_store_staged_never_written_total 1" in metrics
        assert "kith_relay_store_staged_written_total 1" in metrics
    finally:
        await server.stop()


async def test_a_refused_connection_cannot_slip_a_command_in_behind_its_upgrade() -> None:
    """A client refused for a full relay sends its upgrade and a SUB in one write: the SUB,
    read together with the upgrade, must not reach the protocol core."""
    server = RelayServer(MemoryStore(), ServerConfig(port=0, max_connections=1,
                                                     relay=RelayConfig(block_size=BLOCK)))
    await server.start()
    try:
        async with await RelayClient.connect(url(server)) as owner:
            _key, rid, _sid = await queue(owner)
            frame = p.encode(p.Sub(1, rid, bytes(64)))
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(frame))
            request = (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
            ).encode()
            frames_before = server.counters.values["frames_in"]
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request + bytes((0x82, 0x80 | len(frame))) + mask + masked)
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)  # the relay answers and hangs up
            writer.close()
            assert server.counters.values["connections_refused"] == 1
            assert server.counters.values["frames_in"] == frames_before  # never parsed
    finally:
        await server.stop()


async def test_a_quiet_ack_deletes_without_an_answer_and_a_failed_one_is_answered(
    tmp_path: Any,
) -> None:
    """QACK over a real socket, against the SQLite store: the message is gone (held and never
    written, or deleted), no OK comes back, and a QACK that fails is answered with ERR."""
    cfg = ServerConfig(port=0, relay=RelayConfig(block_size=BLOCK, window=4))
    async with RelayServer(SQLiteStore(tmp_path / "relay.db"), cfg) as relay, \
            await RelayClient.connect(url(relay)) as bob, \
            connect(url(relay), compression=None) as ws:
        hello = p.decode_reply(await ws.recv())  # type: ignore[arg-type]
        assert isinstance(hello, p.Hello)
        key = SigningKey.generate()
        await ws.send(p.encode(p.New(1, key.public_key)))
        ids = p.decode_reply(await ws.recv(), BLOCK)  # type: ignore[arg-type]
        assert isinstance(ids, p.Ids)
        rid = ids.recipient_id
        sig = key.sign(p.auth_payload(p.FrameType.SUB, hello.challenge, rid))
        await ws.send(p.encode(p.Sub(2, rid, sig)))
        assert p.decode_reply(await ws.recv(), BLOCK) == p.Ok(2)  # type: ignore[arg-type]
        sends = asyncio.gather(*(bob.send(ids.sender_id, block(i)) for i in range(8)))
        for i in range(8):
            m = p.decode_reply(await ws.recv(), BLOCK)  # type: ignore[arg-type]
            assert isinstance(m, p.Msg) and m.body == block(i)  # never an OK in between
            await ws.send(p.encode(p.Ack(10 + i, rid, m.msg_id, quiet=True)))
        await asyncio.wait_for(sends, 5)  # every SEND answered: acknowledged or committed
        await ws.send(p.encode(p.Ack(30, rid, b"\x07" * 16, quiet=True)))  # never delivered
        assert p.decode_reply(await ws.recv(), BLOCK) == p.Err(  # type: ignore[arg-type]
            30, p.ErrorCode.NO_MESSAGE
        )
        await ws.send(p.encode(p.Ping(31)))
        assert p.decode_reply(await ws.recv(), BLOCK) == p.Pong(31)  # type: ignore[arg-type]
        for _ in range(500):  # the deletions of written messages may still be under way
            if relay.counters.values.get("messages_acked", 0) >= 8:
                break
            await asyncio.sleep(0.01)
        assert relay.counters.values["messages_acked"] == 8
    async with RelayServer(SQLiteStore(tmp_path / "relay.db"), cfg) as relay, \
            await RelayClient.connect(url(relay)) as alice:
        await alice.subscribe(rid, key)
        with pytest.raises(TimeoutError):  # acknowledged means deleted, across a restart
            await alice.next_message(timeout=0.3)
        # The client side: the ERR of a failed QACK is dropped; the connection goes on.
        await alice.ack(rid, b"\x07" * 16, quiet=True)
        await alice.ping()
        assert alice.unmatched == 1
