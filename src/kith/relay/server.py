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

The WebSocket layer is ``picows``: callbacks instead of a coroutine per connection, and frame
parsing in compiled code. The hot path (a SEND or an ACK) therefore runs without an
``asyncio.Task``: a frame arrives in :meth:`_Connection.on_ws_frame`, the core answers, the
store returns a future for the storage effect (the SQLite and memory stores do; Redis returns
a coroutine, which is wrapped in a task), and the outcome is fed back from the future's done
callback. Frames produced in one turn of the event loop leave in one socket write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import partial

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from kith.errors import StoreError, StoreUnavailable
from kith.relay import core
from kith.relay.metrics import MetricsServer
from kith.relay.store.base import AcceptFn, Store, StoredRef

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

#: Keep-alive: a connection silent for this long is pinged, and dropped if no pong follows
#: within the same time. Over Tor a round trip can take seconds, so both are generous.
PING_IDLE = 30.0
PING_REPLY_TIMEOUT = 30.0

#: Seconds a new TCP connection has to complete the WebSocket upgrade.
HANDSHAKE_TIMEOUT = 10.0

#: Read buffer each connection starts with; it grows on demand (a 4 KiB block fits after one
#: doubling). Small, because 10,000 idle connections each hold one.
READ_BUFFER_INIT = 2048


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7650
    max_connections: int = 20_000
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    sweep_interval: float = 600.0
    relay: core.RelayConfig = field(default_factory=core.RelayConfig)


def _frame_header(size: int) -> bytes:
    """The header of one unmasked, final, binary WebSocket frame of ``size`` bytes (RFC 6455
    section 5.2; a server never masks)."""
    if size < 126:
        return bytes((0x82, size))
    if size < 1 << 16:
        return bytes((0x82, 126)) + size.to_bytes(2, "big")
    return bytes((0x82, 127)) + size.to_bytes(8, "big")


class _RandomPool:
    """Random bytes from the OS, drawn a page at a time.

    The core asks for a 16-byte message id per SEND; one ``getrandom`` call per id was a
    measurable cost. The bytes are the same OS randomness, used once each, in order.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        if n > 256:
            return os.urandom(n)
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf, pos = os.urandom(4096), 0
        self._pos = pos + n
        return self._buf[pos : pos + n]


class _EarlyPush:
    """The ``accepted`` callback of one put: a store that stages messages before writing them
    (SQLite) calls it once the message is checked and numbered, and the message goes to its
    subscriber then, without waiting for the commit. The sender's OK still waits for the
    put to complete (durable, or acknowledged by the recipient first)."""

    __slots__ = ("effect", "pushed", "relay")

    def __init__(self, relay: RelayServer, effect: core.StoreMessage) -> None:
        self.relay = relay
        self.effect = effect
        self.pushed = False

    def __call__(self, ref: StoredRef) -> bool:
        self.pushed = self.relay.stored(ref, self.effect.body, self.effect.msg_id)
        return self.pushed


class _Connection(WSListener):
    """One client connection: the core's state plus its output buffer and in-flight work."""

    def __init__(self, relay: RelayServer) -> None:
        super().__init__()
        self.relay = relay
        self.transport: WSTransport | None = None
        self.core = core.RelayConnection(
            relay.config.relay, os.urandom(32), relay.random, time.time(), relay.counters
        )
        self.inflight: set[asyncio.Future[object]] = set()
        self.paused = False
        self.out: list[bytes] = []
        self.closed = False
        self.refused = False
        # A message split over several frames (continuation frames), being reassembled.
        self.fragments: list[bytes] | None = None
        self.fragments_text = False
        self.fragments_size = 0

    # ------------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        relay = self.relay
        if len(relay._connections) >= relay.config.max_connections:
            relay.counters.add("connections_refused")
            self.refused = self.closed = True
            transport.send_close(WSCloseCode.TRY_AGAIN_LATER, b"relay full")
            transport.disconnect()
            return
        relay._connections.add(self)
        relay.counters.add("connections")
        self.write(self.core.hello())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closed:
            # Refused (relay full) or already closed: frames that arrived in the same read as
            # the upgrade must not reach the core, or a connection the relay never counted
            # could hold subscriptions.
            return
        msg_type = frame.msg_type
        if msg_type is WSMsgType.BINARY or msg_type is WSMsgType.TEXT:
            if self.fragments is not None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, b"expected a continuation frame")
                return
            if frame.fin:
                self.receive(frame.get_payload_as_bytes(), msg_type is WSMsgType.TEXT)
                return
            self.fragments = [frame.get_payload_as_bytes()]
            self.fragments_text = msg_type is WSMsgType.TEXT
            self.fragments_size = frame.payload_size
        elif msg_type is WSMsgType.CONTINUATION:
            if self.fragments is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, b"unexpected continuation frame")
                return
            self.fragments_size += frame.payload_size
            if self.fragments_size > self.relay.max_message_size:
                self._fail(WSCloseCode.MESSAGE_TOO_BIG, b"message too big")
                return
            self.fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self.receive(data, self.fragments_text)
        elif msg_type is WSMsgType.CLOSE:
            # Answer the closing handshake (with 1000: echoing a code the peer made up could
            # put an invalid one on the wire) and hang up.
            self.flush()
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        # PING is answered by picows itself; a PONG needs nothing.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.refused:
            return
        self.close()
        self.relay._connections.discard(self)

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes, text: bool) -> None:
        try:
            # A text message is not a relay frame: the core answers it with a typed error.
            outputs = self.core.receive("" if text else data, time.time())
            self.run(outputs)
        except Exception:
            self.relay.counters.add("internal_errors")
            log.exception("frame handling failed")
            self._fail(WSCloseCode.INTERNAL_ERROR, b"")

    def _fail(self, code: WSCloseCode, reason: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.flush()
        transport.send_close(code, reason)
        transport.disconnect()

    # ------------------------------------------------------------------ output

    def write(self, data: bytes) -> None:
        """Queue one frame. Frames produced in one turn of the event loop leave in one socket
        write (a reply, a push and an ACK's answer often coincide), in order."""
        if self.closed:
            return
        out = self.out
        if not out:
            self.relay.loop.call_soon(self.flush)
        out.append(_frame_header(len(data)))
        out.append(data)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is None or transport.is_close_frame_sent or transport.is_disconnected:
            return
        raw = transport.underlying_transport
        raw.write(b"".join(out))
        if raw.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.relay.counters.add("slow_consumers_dropped")
            transport.disconnect(graceful=False)

    # ------------------------------------------------------------------ effects

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
                self.start(out)

    def start(self, effect: core.Effect) -> None:
        """Start one storage effect now (this fixes its order) and finish it in a callback."""
        relay = self.relay
        fut: asyncio.Future[object]
        early = _EarlyPush(relay, effect) if isinstance(effect, core.StoreMessage) else None
        try:
            fut = asyncio.ensure_future(start_effect(relay.store, effect, early), loop=relay.loop)
        except Exception as exc:  # noqa: BLE001 -- fed back to the core like any outcome
            fut = relay.loop.create_future()
            fut.set_exception(exc)
        if fut.done():
            # Settled at the call (the memory store; an ACK of a message SQLite still held;
            # a refusal): finish now, without a callback scheduled for a later turn.
            self._done(effect, early, fut)
            return
        self.inflight.add(fut)
        fut.add_done_callback(partial(self._done, effect, early))
        if len(self.inflight) >= MAX_INFLIGHT and not self.paused:
            self._pause()

    def _done(
        self, effect: core.Effect, early: _EarlyPush | None, fut: asyncio.Future[object]
    ) -> None:
        self.inflight.discard(fut)
        if self.paused and len(self.inflight) <= INFLIGHT_LOW:
            self._resume()
        relay = self.relay
        outcome: object
        if fut.cancelled():
            outcome = StoreUnavailable("store operation cancelled")
        else:
            exc = fut.exception()
            if exc is None:
                outcome = fut.result()
            elif isinstance(exc, StoreUnavailable):
                relay.store_unavailable()
                outcome = exc
            elif isinstance(exc, StoreError):
                # An expected refusal (no such queue, quota, wrong sender key): the core turns
                # it into a typed ERR frame; nothing to log.
                outcome = exc
            else:
                relay.counters.add("internal_errors")
                log.error("store operation failed", exc_info=exc)
                outcome = exc
        if self.closed:
            return
        self.run(self.core.complete(effect, outcome, time.time()))
        if isinstance(effect, core.StoreMessage):
            if isinstance(outcome, StoredRef) and (early is None or not early.pushed):
                relay.stored(outcome, effect.body, effect.msg_id)
        elif isinstance(effect, core.DeleteQueue):
            if outcome is None:
                relay.queue_deleted(effect.recipient_id)
        elif isinstance(effect, core.Fetch) and isinstance(outcome, StoreUnavailable):
            # The core kept the subscription owed a fetch; try again shortly rather than wait
            # for a hint or an ACK that may never come.
            relay.loop.call_later(FETCH_RETRY_DELAY, self._retry_fetch, effect.recipient_id)

    def _pause(self) -> None:
        if self.transport is not None:
            self.paused = True
            self.transport.underlying_transport.pause_reading()

    def _resume(self) -> None:
        self.paused = False
        transport = self.transport
        if transport is not None and not transport.is_disconnected:
            transport.underlying_transport.resume_reading()

    def _retry_fetch(self, recipient_id: bytes) -> None:
        if not self.closed:
            self.run(self.core.notify(recipient_id, time.time()))

    def close(self) -> None:
        if self.closed:
            return
        self.run(self.core.close())
        self.closed = True
        self.out = []

    def going_away(self) -> None:
        """The relay is stopping: say so and hang up."""
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        self.flush()
        transport.send_close(WSCloseCode.GOING_AWAY, b"relay stopping")
        transport.disconnect()


class RelayServer:
    """A relay bound to one store. ``async with RelayServer(...)`` or start()/stop()."""

    def __init__(self, store: Store, config: ServerConfig | None = None) -> None:
        self.store = store
        self.config = config or ServerConfig()
        self.counters = core.Counters()
        self.random = _RandomPool()
        #: Frames up to twice the largest valid one are read and answered with a typed
        #: TOO_LARGE error; anything bigger closes the connection (1009) unread.
        self.max_message_size = 2 * core.RelayConnection(
            self.config.relay, bytes(32), os.urandom, 0.0
        ).max_frame_size()
        self._subscribers: dict[bytes, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics: MetricsServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._last_unavailable_log = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("relay not started")
        return self._loop

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.start(self._on_notify)

        def accept(request: WSUpgradeRequest) -> _Connection:
            return _Connection(self)

        self._server = await ws_create_server(
            accept,
            self.config.host,
            self.config.port,
            websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
            logger_name=_quiet_logger(),
            enable_auto_ping=True,
            auto_ping_idle_timeout=PING_IDLE,
            auto_ping_reply_timeout=PING_REPLY_TIMEOUT,
            auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
            enable_auto_pong=True,
            max_frame_size=self.max_message_size,
            read_buffer_init_size=READ_BUFFER_INIT,
            use_aiofastnet=False,
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
        return int(self._server.sockets[0].getsockname()[1])

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
        for conn in list(self._connections):
            conn.going_away()
        if self._server is not None:
            await self._server.wait_closed()
        if self._metrics is not None:
            await self._metrics.stop()
        # Let in-flight store operations finish so nothing acknowledged is left half-done.
        pending = [f for c in self._connections for f in c.inflight]
        if pending:
            await asyncio.wait(pending, timeout=10)
        await self.store.close()

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ subscriptions

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

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except StoreUnavailable:
                self.store_unavailable()

        task = asyncio.ensure_future(guarded())
        _background.add(task)
        task.add_done_callback(_background.discard)

    def _on_notify(self, recipient_id: bytes, seq: int | None) -> None:
        conn = self._subscribers.get(recipient_id)
        if conn is not None:
            conn.run(conn.core.notify(recipient_id, time.time(), seq))

    def stored(self, ref: StoredRef, body: bytes, msg_id: bytes) -> bool:
        """A message was stored (or staged): push it to its subscriber here if the core says
        it may go directly. True if it was pushed."""
        conn = self._subscribers.get(ref.recipient_id)
        if conn is None:
            return False
        outputs = conn.core.deliver_stored(ref, body, msg_id, time.time())
        conn.run(outputs)
        return any(isinstance(out, core.Reply) for out in outputs)

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
        counters = dict(self.counters.values)
        counters.update({f"store_{k}": v for k, v in self.store.counters().items()})
        lines = []
        for name, value in sorted(counters.items()):
            lines += [f"# TYPE kith_relay_{name}_total counter", f"kith_relay_{name}_total {value}"]
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE kith_relay_{name} gauge", f"kith_relay_{name} {value}"]
        return "\n".join(lines) + "\n"


def start_effect(
    s: Store, effect: core.Effect, accepted: AcceptFn | None = None
) -> Awaitable[object]:
    """Start one storage effect against the store and return an awaitable of its outcome.

    The store call is made here, synchronously, so effects start in the order they are
    passed (the store contract orders messages by call order). Stores may return a plain
    future for their hot operations; then no task is needed to wait for it. ``accepted`` is
    handed to ``put_message`` (see :data:`~kith.relay.store.base.AcceptFn`).
    """
    match effect:
        case core.StoreMessage(_, sid, msg_id, body, now, limits, skey):
            return s.put_message(sid, msg_id, body, now, limits, skey, accepted=accepted)
        case core.AckMessage(_, rid, msg_id):
            return s.ack(rid, msg_id)
        case core.Fetch(rid, after, limit, now, limits):
            return s.pending(rid, after, limit, now, limits)
        case core.LoadQueue(_, entity, by_sender):
            if by_sender:
                return s.queue_by_sender(entity)
            return s.queue_by_recipient(entity)
        case core.CreateQueue(_, record, now):
            return s.create_queue(record, now)
        case core.SecureQueue(_, rid, skey):
            return s.secure_queue(rid, skey)
        case core.DeleteQueue(_, rid):
            return s.delete_queue(rid)
    raise TypeError(f"not a storage effect: {type(effect).__name__}")


_background: set[asyncio.Task[None]] = set()


def _quiet_logger() -> logging.Logger:
    """The WebSocket library logs peer addresses on every connection; the relay must not."""
    quiet = logging.getLogger("kith.relay.websocket")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    quiet.setLevel(logging.CRITICAL + 1)
    return quiet
