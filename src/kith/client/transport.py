"""Relay connections for the client service: one per relay, reconnecting, resubscribing.

The client service never touches a WebSocket. It asks a :class:`RelayPool` to create, secure,
subscribe, send to, acknowledge and delete queues on relays named by URL, and receives pushed
messages through an ``on_message`` callback. The pool

- keeps at most one connection per relay URL, opened on first use;
- remembers every subscription and re-subscribes after a reconnect (so an unacknowledged
  message is pushed again: the service must treat delivery as at-least-once);
- reconnects with exponential backoff and jitter after a drop, forever, until closed;
- proves a sender key (SAUTH) once per connection and sender id, before the first SEND;
- calls ``on_message`` for one connection's pushes strictly one at a time, in arrival order,
  awaiting each call before the next, so the service can decrypt, persist and ACK in order;
- reports connection state changes through ``on_state``;
- goes through a SOCKS5 proxy (Tor) when given one, for every connection.

Commands fail fast with :class:`~kith.client.relay.RelayUnreachable` while a relay is down
(they are not queued here); retrying is the service's job (its outbox), so nothing is retried
twice by two layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kith.client.relay import (
    RelayClient,
    RelayError,
    RelayProtocolError,
    RelayRefused,
    RelayUnreachable,
)
from kith.crypto.signing import SigningKey
from kith.protocol import relay as p

log = logging.getLogger("kith.client")

#: SUBs a reconnecting connection keeps in flight at once (the relay accepts 256 storage
#: operations in flight per connection before it stops reading).
SUB_PIPELINE = 64


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``, each with +-``jitter``."""

    initial: float = 0.25
    maximum: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return float(base * (1 + self.jitter * (2 * rand() - 1)))


OnMessage = Callable[[str, p.Msg], Awaitable[None]]
OnState = Callable[[str, ConnectionState], None]
#: Called with (relay url, recipient id) when another connection took over a subscription.
OnTakenOver = Callable[[str, bytes], None]


@dataclass(slots=True)
class _Subscription:
    recipient_id: bytes
    key: SigningKey


class _Relay:
    """One relay URL: its live connection (if any), subscriptions and reader task."""

    def __init__(self, pool: RelayPool, url: str) -> None:
        self.pool = pool
        self.url = url
        self.client: RelayClient | None = None
        self.subs: dict[bytes, _Subscription] = {}
        self.proven: set[bytes] = set()
        #: queues whose subscription this connection already took back once after an END
        self.retaken: set[bytes] = set()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failed_attempts = 0

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run())

    async def connected(self, timeout: float) -> RelayClient:
        self.start()
        if self.client is None:
            try:
                async with asyncio.timeout(timeout):
                    await self.ready.wait()
            except TimeoutError:
                raise RelayUnreachable("relay unreachable") from None
        if self.client is None:
            raise RelayUnreachable("relay unreachable")
        return self.client

    async def _run(self) -> None:
        while not self.pool.closed:
            self.pool.state(self.url, ConnectionState.CONNECTING)
            try:
                client = await RelayClient.connect(self.url, proxy=self.pool.proxy)
            except RelayError:
                await self._sleep_backoff()
                continue
            # Publish the connection first, so a subscribe() racing with this loop either is
            # in the list below or sees the client and subscribes itself (a double SUB only
            # restarts delivery, which the service tolerates).
            self.client, self.proven, self.retaken = client, set(), set()
            client.on_end = self._taken_over
            try:
                await self._subscribe_all(client)
            except RelayError:
                self.client = None
                await client.close()
                await self._sleep_backoff()
                continue
            self.failed_attempts = 0
            self.ready.set()
            self.pool.state(self.url, ConnectionState.CONNECTED)
            try:
                await self._pump(client)
            finally:
                self.ready.clear()
                self.client = None
                await client.close()
                self.pool.state(self.url, ConnectionState.DISCONNECTED)
            if not self.pool.closed:
                await self._sleep_backoff()

    async def _subscribe_all(self, client: RelayClient) -> None:
        """Subscribe every remembered queue on a new connection, :data:`SUB_PIPELINE` SUBs in
        flight at a time: over Tor a round trip takes about a second, and one SUB per round
        trip would leave a profile with many contacts deaf for minutes after a reconnect."""
        subs = list(self.subs.values())
        refused_quota = 0
        for start in range(0, len(subs), SUB_PIPELINE):
            chunk = subs[start : start + SUB_PIPELINE]
            results = await asyncio.gather(
                *(client.subscribe(sub.recipient_id, sub.key) for sub in chunk),
                return_exceptions=True,
            )
            for sub, result in zip(chunk, results, strict=True):
                if result is None:
                    continue
                if isinstance(result, RelayRefused) and result.code is p.ErrorCode.AUTH:
                    # The relay has no such queue (deleted, or lost with its store): asking
                    # again on every reconnect would never succeed.
                    self.subs.pop(sub.recipient_id, None)
                elif isinstance(result, RelayRefused) and result.code is p.ErrorCode.QUOTA:
                    # More subscriptions than one connection may hold. Reconnecting would
                    # only be refused again: keep the connection and the others.
                    refused_quota += 1
                elif isinstance(result, RelayError):
                    raise result
                elif isinstance(result, BaseException):
                    # Not a relay answer (a SUB cancelled on its own, or a bug): drop this
                    # connection and start again, rather than keep one nobody reads.
                    log.error("resubscribing failed: %s", type(result).__name__)
                    raise RelayProtocolError("resubscribing failed") from result
        if refused_quota:
            log.warning("relay refused %d subscriptions: too many on one connection",
                        refused_quota)

    def _taken_over(self, recipient_id: bytes) -> None:
        """Another connection subscribed to one of our queues: a copy of this profile (or of
        its keys) is running elsewhere. Say so, and take the subscription back once, so this
        device keeps receiving; the person decides what the alarm means."""
        sub = self.subs.get(recipient_id)
        if sub is None:
            return
        self.pool.taken_over(self.url, recipient_id)
        client = self.client
        # Once per connection: a copy that keeps re-subscribing must not turn this into a
        # subscription tug of war at network speed (the next reconnect takes it back again).
        if client is not None and recipient_id not in self.retaken:
            self.retaken.add(recipient_id)
            task = asyncio.create_task(self._resubscribe(client, sub))
            self.pool.background.add(task)
            task.add_done_callback(self.pool.background.discard)

    async def _resubscribe(self, client: RelayClient, sub: _Subscription) -> None:
        with contextlib.suppress(RelayError):
            await client.subscribe(sub.recipient_id, sub.key)

    async def _pump(self, client: RelayClient) -> None:
        while True:
            try:
                msg = await client.next_message()
            except (RelayUnreachable, RelayProtocolError):
                return
            if msg.recipient_id not in self.subs:
                continue  # unsubscribed meanwhile; the relay will redeliver if resubscribed
            try:
                await self.pool.on_message(self.url, msg)
            except Exception as exc:  # noqa: BLE001 - one bad message must not end the connection
                # The service failed to handle one message: leave it unacknowledged (it comes
                # back on the next subscription) and keep the connection. Log the type only: a
                # traceback's locals and messages could carry names or content.
                log.error("message handler failed: %s", type(exc).__name__)  # noqa: TRY400

    async def _sleep_backoff(self) -> None:
        delay = self.pool.backoff.delay(self.failed_attempts)
        self.failed_attempts += 1
        await asyncio.sleep(delay)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.client is not None:
            await self.client.close()
            self.client = None


class RelayPool:
    """See the module docstring."""

    def __init__(
        self,
        on_message: OnMessage,
        *,
        on_state: OnState | None = None,
        on_taken_over: OnTakenOver | None = None,
        proxy: str | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 15.0,
    ) -> None:
        self.on_message = on_message
        self._on_state = on_state
        self._on_taken_over = on_taken_over
        self.background: set[asyncio.Task[None]] = set()
        self.proxy = proxy
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self._relays: dict[str, _Relay] = {}
        self.closed = False

    def state(self, url: str, state: ConnectionState) -> None:
        if self._on_state is not None:
            self._on_state(url, state)

    def taken_over(self, url: str, recipient_id: bytes) -> None:
        if self._on_taken_over is not None:
            self._on_taken_over(url, recipient_id)

    def _relay(self, url: str) -> _Relay:
        if self.closed:
            raise RelayUnreachable("relay pool is closed")
        relay = self._relays.get(url)
        if relay is None:
            relay = self._relays[url] = _Relay(self, url)
        return relay

    async def _client(self, url: str) -> RelayClient:
        return await self._relay(url).connected(self.connect_timeout)

    async def create_queue(self, url: str, recipient_key: SigningKey) -> tuple[bytes, bytes, int]:
        """NEW on ``url``: returns (recipient_id, sender_id, block_size)."""
        client = await self._client(url)
        rid, sid = await client.create_queue(recipient_key)
        return rid, sid, client.block_size

    async def block_size(self, url: str) -> int:
        return (await self._client(url)).block_size

    async def secure(
        self, url: str, recipient_id: bytes, recipient_key: SigningKey, sender_public_key: bytes
    ) -> None:
        await (await self._client(url)).secure(recipient_id, recipient_key, sender_public_key)

    async def subscribe(self, url: str, recipient_id: bytes, recipient_key: SigningKey) -> None:
        """Subscribe now if connected (else on connect) and after every reconnect."""
        relay = self._relay(url)
        relay.subs[recipient_id] = _Subscription(recipient_id, recipient_key)
        relay.start()
        if relay.client is not None:
            await relay.client.subscribe(recipient_id, recipient_key)

    def unsubscribe(self, url: str, recipient_id: bytes) -> None:
        """Stop handling pushes for this queue (the relay keeps them until a new SUB)."""
        relay = self._relays.get(url)
        if relay is not None:
            relay.subs.pop(recipient_id, None)

    async def send(self, url: str, sender_id: bytes, sender_key: SigningKey, block: bytes) -> None:
        relay = self._relay(url)
        client = await relay.connected(self.connect_timeout)
        if sender_id not in relay.proven:
            await client.sender_auth(sender_id, sender_key)
            relay.proven.add(sender_id)
        try:
            await client.send(sender_id, block)
        except RelayRefused as exc:
            if exc.code is not p.ErrorCode.AUTH:
                raise
            # SAUTH on a queue not yet secured is answered OK and proves nothing, so once the
            # recipient secures it the earlier "proof" no longer counts: prove once more.
            relay.proven.discard(sender_id)
            await client.sender_auth(sender_id, sender_key)
            relay.proven.add(sender_id)
            await client.send(sender_id, block)

    async def ack(
        self, url: str, recipient_id: bytes, msg_id: bytes, *, quiet: bool = False
    ) -> None:
        await (await self._client(url)).ack(recipient_id, msg_id, quiet=quiet)

    async def delete_queue(self, url: str, recipient_id: bytes, recipient_key: SigningKey) -> None:
        self.unsubscribe(url, recipient_id)
        await (await self._client(url)).delete_queue(recipient_id, recipient_key)

    def is_connected(self, url: str) -> bool:
        relay = self._relays.get(url)
        return relay is not None and relay.client is not None

    async def close(self) -> None:
        self.closed = True
        relays, self._relays = self._relays, {}
        for relay in relays.values():
            await relay.close()
