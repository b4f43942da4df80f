"""The relay's async adapter: WebSocket I/O around :mod:`kith.relay.core`.

This module owns the sockets, the clock and the random source, and nothing else: every
protocol decision is made by :class:`~kith.relay.core.RelayConnection`. The adapter

- sends ``HELLO`` with a fresh random challenge on each connection;
- feeds each binary message to the core and writes the replies in order;
- runs the core's storage effects against the :class:`~kith.relay.store.base.Store` and feeds
  the outcomes back (storage effects are *started* in the order the core returned them, which
  is what keeps per-queue order);
- keeps the registry of which connection holds which queue's subscription, and routes the
  store's new-message hints (possibly from another relay process) to it;
- serves aggregate metrics on a separate local port and sweeps expired messages.

It records no addresses and keeps no per-client logs: the logger only ever sees aggregate
events (start, stop, store unavailable), never a peer address or a queue id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from kith.errors import StoreError, StoreUnavailable
from kith.relay import core
from kith.relay.metrics import MetricsServer
from kith.relay.store.base import Store, StoredRef

log = logging.getLogger("kith.relay")

#: A connection whose unsent output exceeds this is a slow consumer and is dropped; its
#: unacknowledged messages stay stored and are redelivered when it subscribes again.
MAX_WRITE_BUFFER = 8 * 1024 * 1024

#: Seconds before a subscription whose fetch failed (storage unavailable) is fetched again.
FETCH_RETRY_DELAY = 1.0

#: Storage operations one connection may have in flight. Past this the relay stops reading
#: that connection (TCP pushes back on the client) until it is down to the low mark, so one
#: connection pipelining thousands of commands cannot queue unbounded work and memory.
MAX_INFLIGHT = 256
INFLIGHT_LOW = 128


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7650
    max_connections: int = 20_000
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    sweep_interval: float = 600.0
    relay: core.RelayConfig = field(default_factory=core.RelayConfig)


class _Connection:
    __slots__ = ("closed", "core", "flush_pending", "relay", "room", "tasks", "ws")

    def __init__(self, relay: RelayServer, ws: ServerConnection) -> None:
        self.relay = relay
        self.ws = ws
        self.core = core.RelayConnection(
            relay.config.relay, os.urandom(32), os.urandom, time.time(), relay.counters
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.room = asyncio.Event()
        self.room.set()
        self.flush_pending = False
        self.closed = False

    def write(self, data: bytes) -> None:
        """Queue one frame. Frames produced in one turn of the event loop leave in one socket
        write (a reply, a push and an ACK's answer often coincide), in order."""
        ws = self.ws
        if self.closed or ws.protocol.state is not State.OPEN:
            return
        ws.protocol.send_binary(data)
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        ws = self.ws
        chunks = ws.protocol.data_to_send()
        if not chunks:
            return
        if b"" in chunks:
            # An end-of-stream marker (the library is closing): hand everything back to it.
            ws.protocol.writes[:0] = chunks
            ws.send_data()
            return
        ws.transport.write(b"".join(chunks))
        if ws.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.relay.counters.add("slow_consumers_dropped")
            ws.transport.abort()

    def run(self, outputs: list[core.Output]) -> None:
        """Carry out the core's outputs in order."""
        for out in outputs:
            if isinstance(out, core.Reply):
                self.write(out.data)
            elif isinstance(out, core.Subscribe):
                self.relay.subscribe(out.recipient_id, self)
            elif isinstance(out, core.Unsubscribe):
                self.relay.unsubscribe(out.recipient_id, self)
            else:
                task = asyncio.ensure_future(self._effect(out))
                self.tasks.add(task)
                task.add_done_callback(self._task_done)
                if len(self.tasks) >= MAX_INFLIGHT:
                    self.room.clear()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if len(self.tasks) <= INFLIGHT_LOW:
            self.room.set()

    async def _effect(self, effect: core.Effect) -> None:
        outcome: object
        try:
            outcome = await self.relay.execute(effect)
        except StoreUnavailable as exc:
            self.relay.store_unavailable()
            outcome = exc
        except StoreError as exc:
            # An expected refusal (no such queue, quota, wrong sender key): the core turns it
            # into a typed ERR frame; nothing to log.
            outcome = exc
        except Exception as exc:
            self.relay.counters.add("internal_errors")
            log.exception("store operation failed")
            outcome = exc
        if self.closed:
            return
        self.run(self.core.complete(effect, outcome, time.time()))
        if isinstance(effect, core.DeleteQueue) and outcome is None:
            self.relay.queue_deleted(effect.recipient_id)
        if isinstance(effect, core.Fetch) and isinstance(outcome, StoreUnavailable):
            # The core kept the subscription owed a fetch; try again shortly rather than wait
            # for a hint or an ACK that may never come.
            asyncio.get_running_loop().call_later(
                FETCH_RETRY_DELAY, self._retry_fetch, effect.recipient_id
            )
        if isinstance(effect, core.StoreMessage) and isinstance(outcome, StoredRef):
            self.relay.stored(outcome, effect.body, effect.msg_id)

    def _retry_fetch(self, recipient_id: bytes) -> None:
        if not self.closed:
            self.run(self.core.notify(recipient_id, time.time()))

    def close(self) -> None:
        self.run(self.core.close())
        self.closed = True


class RelayServer:
    """A relay bound to one store. ``async with RelayServer(...)`` or start()/stop()."""

    def __init__(self, store: Store, config: ServerConfig | None = None) -> None:
        self.store = store
        self.config = config or ServerConfig()
        self.counters = core.Counters()
        self._subscribers: dict[bytes, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._server: Server | None = None
        self._metrics: MetricsServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._last_unavailable_log = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.store.start(self._on_notify)
        limit = core.RelayConnection(
            self.config.relay, bytes(32), os.urandom, 0.0
        ).max_frame_size()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            # Frames up to twice the largest valid one are read and answered with a typed
            # TOO_LARGE error; anything bigger closes the connection (1009) unread.
            max_size=2 * limit,
            compression=None,
            server_header=None,
            ping_interval=30,
            ping_timeout=30,
            logger=_quiet_logger(),
        )
        if self.config.metrics_port is not None:
            self._metrics = MetricsServer(self.render_metrics)
            await self._metrics.start(self.config.metrics_host, self.config.metrics_port)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("relay listening on %s:%d", self.config.host, self.port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("relay not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.port if self._metrics is not None else None

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._metrics is not None:
            await self._metrics.stop()
        # Let in-flight store operations finish so nothing acknowledged is left half-done.
        pending = [t for c in self._connections for t in c.tasks]
        if pending:
            await asyncio.wait(pending, timeout=10)
        await self.store.close()

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ connections

    async def _handle(self, ws: ServerConnection) -> None:
        if len(self._connections) >= self.config.max_connections:
            self.counters.add("connections_refused")
            await ws.close(1013, "relay full")
            return
        conn = _Connection(self, ws)
        self._connections.add(conn)
        self.counters.add("connections_total")
        try:
            conn.write(conn.core.hello())
            async for data in ws:
                conn.run(conn.core.receive(data, time.time()))
                if not conn.room.is_set():
                    await conn.room.wait()
        except ConnectionClosed:
            pass
        finally:
            conn.close()
            self._connections.discard(conn)

    def subscribe(self, recipient_id: bytes, conn: _Connection) -> None:
        old = self._subscribers.get(recipient_id)
        self._subscribers[recipient_id] = conn
        if old is not None and old is not conn:
            old.run(old.core.taken_over(recipient_id))
        else:
            self._spawn(self.store.watch(recipient_id))

    def queue_deleted(self, recipient_id: bytes) -> None:
        """A queue was deleted: whichever connection still holds its subscription loses it."""
        holder = self._subscribers.get(recipient_id)
        if holder is not None:
            holder.run(holder.core.taken_over(recipient_id))
            self.unsubscribe(recipient_id, holder)

    def unsubscribe(self, recipient_id: bytes, conn: _Connection) -> None:
        if self._subscribers.get(recipient_id) is conn:
            del self._subscribers[recipient_id]
            self._spawn(self.store.unwatch(recipient_id))

    def _spawn(self, coro: object) -> None:
        async def guarded() -> None:
            try:
                await coro  # type: ignore[misc]
            except StoreUnavailable:
                self.store_unavailable()

        task = asyncio.ensure_future(guarded())
        _background.add(task)
        task.add_done_callback(_background.discard)

    def _on_notify(self, recipient_id: bytes, seq: int | None) -> None:
        conn = self._subscribers.get(recipient_id)
        if conn is not None:
            conn.run(conn.core.notify(recipient_id, time.time(), seq))

    def stored(self, ref: StoredRef, body: bytes, msg_id: bytes) -> None:
        conn = self._subscribers.get(ref.recipient_id)
        if conn is not None:
            conn.run(conn.core.deliver_stored(ref, body, msg_id, time.time()))

    async def execute(self, effect: core.Effect) -> object:
        return await execute_effect(self.store, effect)

    def store_unavailable(self) -> None:
        self.counters.add("store_unavailable")
        now = time.monotonic()
        if now - self._last_unavailable_log > 10:
            self._last_unavailable_log = now
            log.warning("storage backend unavailable; refusing SEND/ACK until it returns")

    async def _sweep(self) -> None:
        """Expire old messages and idle queues, now and then.

        Queues this process holds subscriptions for are marked used first: a subscriber may
        stay connected for longer than the queue TTL without sending SUB again, and its queue
        must not be taken from under it, whichever relay process sweeps.
        """
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            await self.sweep_once(int(time.time()))

    async def sweep_once(self, now: int) -> None:
        """One pass of :meth:`_sweep` at ``now`` (tests call it with a clock of their own)."""
        limits = self.config.relay.limits
        try:
            await self.store.touch_queues(list(self._subscribers), now)
            n = await self.store.expire(now, limits)
            self.counters.add("messages_expired", n)
            q = await self.store.expire_queues(now, limits)
            self.counters.add("queues_expired", q)
        except StoreUnavailable:
            self.store_unavailable()

    # ------------------------------------------------------------------ metrics

    async def render_metrics(self) -> str:
        gauges = {
            "connections_open": len(self._connections),
            "subscriptions": len(self._subscribers),
        }
        try:
            gauges.update({f"store_{k}": v for k, v in (await self.store.stats()).items()})
        except StoreUnavailable:
            gauges["store_up"] = 0
        else:
            gauges["store_up"] = 1
        lines = []
        for name, value in sorted(self.counters.values.items()):
            lines += [f"# TYPE kith_relay_{name}_total counter", f"kith_relay_{name}_total {value}"]
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE kith_relay_{name} gauge", f"kith_relay_{name} {value}"]
        return "\n".join(lines) + "\n"


async def execute_effect(s: Store, effect: core.Effect) -> object:
    """Run one storage effect against the store and return its outcome."""
    match effect:
        case core.CreateQueue(_, record, now):
            await s.create_queue(record, now)
            return None
        case core.LoadQueue(_, entity, by_sender):
            if by_sender:
                return await s.queue_by_sender(entity)
            return await s.queue_by_recipient(entity)
        case core.SecureQueue(_, rid, skey):
            await s.secure_queue(rid, skey)
            return None
        case core.DeleteQueue(_, rid):
            await s.delete_queue(rid)
            return None
        case core.StoreMessage(_, sid, msg_id, body, now, limits, skey):
            return await s.put_message(sid, msg_id, body, now, limits, skey)
        case core.Fetch(rid, after, limit, now, limits):
            return await s.pending(rid, after, limit, now, limits)
        case core.AckMessage(_, rid, msg_id):
            return await s.ack(rid, msg_id)
    raise TypeError(f"not a storage effect: {type(effect).__name__}")


_background: set[asyncio.Task[None]] = set()


def _quiet_logger() -> logging.Logger:
    """The websockets library logs peer addresses on errors; the relay must not."""
    quiet = logging.getLogger("kith.relay.websocket")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    quiet.setLevel(logging.CRITICAL + 1)
    return quiet
