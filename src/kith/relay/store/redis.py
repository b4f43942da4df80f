"""The relay store on Redis (or Valkey), so several relay processes on several hosts serve one
queue space.

Theory of operation
-------------------
Every change is one Lua script, and Redis runs a script atomically: no other client's
command runs in between. So the quota check, the sender-key check, the ``seq`` counter and the
append happen as one step however many relay processes send to the same queue, and ``seq``
stays contiguous per queue (a counter in the queue's hash, incremented only when a message
is actually stored). Scripts check everything they refuse *before* their first write (Redis
does not roll a script back), and carry the ``#!lua`` shebang so that Redis refuses a write
script up front when it is out of memory instead of failing half-way. They negate as
``0 - n``: Lua renders ``-n`` of zero as ``-0``, which Redis rejects as an integer.

Order: Redis executes one connection's commands in the order they arrive, but a connection
pool does not send concurrent calls in call order. So every write goes through one *write
lane*: a caller appends its script call to a queue synchronously (before its first ``await``,
which fixes its place), and one task sends everything queued as a pipeline on one dedicated
connection and hands each reply back. Per-queue message order is therefore call order, as the
contract requires, and batching keeps throughput up. On every (re)connection the lane loads
its scripts on that connection before anything else, so a restarted Redis (empty script
cache) cannot make one write of a batch fail and a later one succeed. Reads use a connection
pool: their order does not matter, and a read issued after an acknowledged write sees it.

Keys (``P`` is the configurable prefix, default ``kith:``; ids are lower-case hex)::

    P q:<rid>   hash   sid, rk, sk (absent until secured), created, seq, n (messages), b (bytes)
    P s:<sid>   string the recipient id, hex: the only link from a sender id to its queue
    P m:<rid>   hash   msg_id -> "<seq>:<received_at>:<body>"
    P z:<rid>   zset   msg_id scored by seq: delivery order and ``after_seq`` paging
    P x         zset   "<rid>:<msg_id>" scored by received_at: what expire() walks
    P u         zset   rid scored by the week of the queue's last use: what expire_queues() walks
    P st        hash   queues, messages, bytes: aggregate counters for stats()

The use index ``P u`` is a sorted set rather than a key TTL refreshed on use: a key that
Redis expires by itself would leave the sender index, the expiry index and the aggregate
counters pointing at a queue that is gone, and the relay's clock (the ``now`` every call takes)
would not decide when. Puts and creations mark the queue in their own script; ``pending`` and
``touch_queues`` do so once per queue per week per process. A queue created by a release that
kept no index is adopted by its next use, and kept until then.

Nothing else is stored: no addresses, no clients, no logs. Scripts derive the per-queue keys
of a ``put`` from the sender index, so this backend targets a single Redis primary (optionally
with replicas and Sentinel), not Redis Cluster.

New-message hints across processes
----------------------------------
A put publishes on the queue's own channel ``P n:<rid>`` (inside the same script, so a hint is
never sent for a message that was not stored). Each process subscribes, on one dedicated
pub/sub connection, to the channels of the queues it has subscribers for. Per-queue channels
were chosen over one shared channel because with a shared channel every relay receives and
discards every message event of the whole cluster, so traffic per relay grows with the number
of relays; with per-queue channels Redis delivers an event only to the relays that hold that
queue's subscriber, at the price of one ``SUBSCRIBE`` per watched queue. The payload is a
random token of the publishing store instance, so a process ignores the echo of its own puts
(for those it schedules the local hint directly).

Failure behaviour
-----------------
Every call is bounded by ``op_timeout`` (socket, pool wait and an overall deadline) and maps
any Redis or socket failure to :class:`~kith.errors.StoreUnavailable`. Writes are never
retried automatically: a retried write whose first reply was lost could store a message
twice. Reads are retried once on a fresh connection, because a pooled connection can die with
a restarting server in ways the pool cannot see beforehand, and a read is safe to repeat. When
Redis comes back, the same store object simply works again. A deadline that expires after
Redis executed a write reports StoreUnavailable for a write that happened; that is a false
failure (the client retries; end-to-end encryption deduplicates), never a false success.

Hints survive outages. The subscriber task reconnects with backoff, re-subscribes every
watched channel, and then hints *every* watched queue once, because messages stored while it
was away produced no event it could see. ``watch`` therefore never fails because of an
outage: the interest is kept and restored on reconnection. A keep-alive ``PING`` detects a
pub/sub connection that died silently. And after any call fails, the next call that succeeds
hints every watched queue once more: a hint's fetch may have been the call that failed, and
the relay fetches again only when told to.

Durability
----------
``put_message`` and ``ack`` return once Redis has executed the script and replied. Whether that
reply means "on disk" is Redis's persistence configuration, which the operator sets in
``redis.conf``: ``appendonly yes`` with ``appendfsync always`` fsyncs the append-only file
before Redis replies (the strongest guarantee, the one the relay's contract assumes);
``appendfsync everysec`` can lose up to a second of acknowledged messages on a crash of the
Redis host; RDB snapshots alone can lose minutes. Redis cannot overwrite deleted values in
place: acknowledged ciphertext leaves memory when freed and the append-only file when it is
rewritten, so run Redis on an encrypted disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.typing import EncodableT

from kith.errors import ConfigError, StoreUnavailable
from kith.relay.store._common import (
    UseMarks,
    Watchers,
    check_body,
    check_count,
    check_id,
    expiry_cutoff,
    hint_after_caller,
)
from kith.relay.store.base import (
    AcceptFn,
    AlreadySecured,
    DuplicateId,
    Limits,
    NoQueue,
    NotAuthorized,
    NotifyFn,
    QueueRecord,
    QuotaExceeded,
    StoredMessage,
    StoredRef,
    idle_cutoff,
    use_mark,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Scripts use shebang flags, which Redis 7.0 introduced.
MIN_REDIS_VERSION: Final = (7, 0)

_EXPIRE_BATCH: Final = 500
#: Idle queues one expire_queues script deletes (each may hold up to its quota of messages).
_IDLE_BATCH: Final = 16
_PAGE: Final = 500
#: Most script calls the write lane sends in one pipeline.
_LANE_BATCH: Final = 512

# ---------------------------------------------------------------------------- Lua scripts

_CREATE: Final = """#!lua
-- KEYS: q, s, st, u   ARGV: rid, sid, recipient_key, sender_key, has_sender_key, now, mark
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
redis.call('HSET', KEYS[1], 'sid', ARGV[2], 'rk', ARGV[3], 'created', ARGV[6],
           'seq', 0, 'n', 0, 'b', 0)
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'sk', ARGV[4]) end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'queues', 1)
return 1
"""

_BY_SENDER: Final = """#!lua flags=no-writes
-- KEYS: s   ARGV: prefix
local rid = redis.call('GET', KEYS[1])
if not rid then return false end
local v = redis.call('HMGET', ARGV[1] .. 'q:' .. rid, 'sid', 'rk', 'sk')
if not v[1] then return false end
return {rid, v[1], v[2], v[3]}
"""

_SECURE: Final = """#!lua
-- KEYS: q   ARGV: sender_key
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local sk = redis.call('HGET', KEYS[1], 'sk')
if not sk then
  redis.call('HSET', KEYS[1], 'sk', ARGV[1])
  return 1
end
if sk == ARGV[1] then return 1 end
return 0
"""

_DELETE: Final = """#!lua
-- KEYS: q, m, z, x, st, u   ARGV: rid, prefix
local v = redis.call('HMGET', KEYS[1], 'sid', 'n', 'b')
if not v[1] then return 0 end
redis.call('ZREM', KEYS[6], ARGV[1])
local mids = redis.call('HKEYS', KEYS[2])
for i = 1, #mids do
  redis.call('ZREM', KEYS[4], ARGV[1] .. ':' .. mids[i])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], ARGV[2] .. 's:' .. v[1])
redis.call('HINCRBY', KEYS[5], 'queues', -1)
redis.call('HINCRBY', KEYS[5], 'messages', 0 - tonumber(v[2]))
redis.call('HINCRBY', KEYS[5], 'bytes', 0 - tonumber(v[3]))
return 1
"""

# Results: {0} no queue, {1} not authorised, {2} quota, {3} duplicate, {4, rid, seq} stored.
_PUT: Final = """#!lua
-- KEYS: s, x, st, u
-- ARGV: prefix, msg_id, now, body, max_messages, max_bytes, sender_key, has_key, token, mark,
--       max_store_bytes (0: no cap)
local rid = redis.call('GET', KEYS[1])
if not rid then return {0} end
local q = ARGV[1] .. 'q:' .. rid
local v = redis.call('HMGET', q, 'sk', 'n', 'b')
if not v[2] then return {0} end
if v[1] and (ARGV[8] ~= '1' or v[1] ~= ARGV[7]) then return {1} end
local size = string.len(ARGV[4])
if tonumber(v[2]) + 1 > tonumber(ARGV[5]) or tonumber(v[3]) + size > tonumber(ARGV[6]) then
  return {2}
end
local cap = tonumber(ARGV[11])
if cap > 0 and math.max(0, tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0')) + size > cap then
  return {2}
end
local m = ARGV[1] .. 'm:' .. rid
if redis.call('HEXISTS', m, ARGV[2]) == 1 then return {3} end
local seq = redis.call('HINCRBY', q, 'seq', 1)
redis.call('HINCRBY', q, 'n', 1)
redis.call('HINCRBY', q, 'b', size)
redis.call('HSET', m, ARGV[2], seq .. ':' .. ARGV[3] .. ':' .. ARGV[4])
redis.call('ZADD', ARGV[1] .. 'z:' .. rid, seq, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], rid .. ':' .. ARGV[2])
redis.call('HINCRBY', KEYS[3], 'messages', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', size)
redis.call('ZADD', KEYS[4], 'GT', ARGV[10], rid)
redis.call('PUBLISH', ARGV[1] .. 'n:' .. rid, ARGV[9])
return {4, rid, seq}
"""

_PENDING: Final = """#!lua flags=no-writes
-- KEYS: q, z, m   ARGV: after_seq, limit, cutoff, page
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local out = {}
local need = tonumber(ARGV[2])
local cutoff = tonumber(ARGV[3])
local from = '(' .. ARGV[1]
while need > 0 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], from, '+inf', 'WITHSCORES',
                         'LIMIT', 0, tonumber(ARGV[4]))
  if #ids == 0 then break end
  for i = 1, #ids, 2 do
    local v = redis.call('HGET', KEYS[3], ids[i])
    if v and tonumber(string.match(v, '^%d+:(%d+):')) >= cutoff then
      out[#out + 1] = ids[i]
      out[#out + 1] = v
      need = need - 1
      if need == 0 then break end
    end
  end
  from = '(' .. ids[#ids]
end
return out
"""

_ACK: Final = """#!lua
-- KEYS: q, m, z, x, st   ARGV: msg_id, rid
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return 0 end
local a = string.find(v, ':', 1, true)
local size = string.len(v) - string.find(v, ':', a + 1, true)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2] .. ':' .. ARGV[1])
redis.call('HINCRBY', KEYS[1], 'n', -1)
redis.call('HINCRBY', KEYS[1], 'b', 0 - size)
redis.call('HINCRBY', KEYS[5], 'messages', -1)
redis.call('HINCRBY', KEYS[5], 'bytes', 0 - size)
return 1
"""

_EXPIRE: Final = """#!lua
-- KEYS: x, st   ARGV: prefix, cutoff, batch
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2],
                         'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for i = 1, #items do
  local it = items[i]
  local c = string.find(it, ':', 1, true)
  local rid = string.sub(it, 1, c - 1)
  local mid = string.sub(it, c + 1)
  local m = ARGV[1] .. 'm:' .. rid
  local v = redis.call('HGET', m, mid)
  if v then
    local a = string.find(v, ':', 1, true)
    local size = string.len(v) - string.find(v, ':', a + 1, true)
    local q = ARGV[1] .. 'q:' .. rid
    redis.call('HDEL', m, mid)
    redis.call('ZREM', ARGV[1] .. 'z:' .. rid, mid)
    redis.call('HINCRBY', q, 'n', -1)
    redis.call('HINCRBY', q, 'b', 0 - size)
    redis.call('HINCRBY', KEYS[2], 'messages', -1)
    redis.call('HINCRBY', KEYS[2], 'bytes', 0 - size)
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], it)
end
return {#items, n}
"""

_TOUCH: Final = """#!lua
-- KEYS: u   ARGV: prefix, mark, rid...
for i = 3, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. 'q:' .. ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[i])
  end
end
return 1
"""

_EXPIRE_QUEUES: Final = """#!lua
-- KEYS: u, x, st   ARGV: prefix, cutoff, batch
local rids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for i = 1, #rids do
  local rid = rids[i]
  local q = ARGV[1] .. 'q:' .. rid
  local m = ARGV[1] .. 'm:' .. rid
  local v = redis.call('HMGET', q, 'sid', 'n', 'b')
  if v[1] then
    local mids = redis.call('HKEYS', m)
    for j = 1, #mids do
      redis.call('ZREM', KEYS[2], rid .. ':' .. mids[j])
    end
    redis.call('DEL', q, m, ARGV[1] .. 'z:' .. rid, ARGV[1] .. 's:' .. v[1])
    redis.call('HINCRBY', KEYS[3], 'queues', -1)
    redis.call('HINCRBY', KEYS[3], 'messages', 0 - tonumber(v[2]))
    redis.call('HINCRBY', KEYS[3], 'bytes', 0 - tonumber(v[3]))
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], rid)
end
return {#rids, n}
"""


def _b(value: object) -> bytes:
    """A reply field that must be bytes (the client never decodes replies)."""
    if not isinstance(value, bytes):
        raise StoreUnavailable("unexpected reply from redis")
    return value


def _opt_b(value: object) -> bytes | None:
    return None if value is None else _b(value)


class _StalePubSub(Exception):
    """The pub/sub connection stopped answering keep-alive pings."""


class RedisStore:
    """The relay store contract on a single Redis (>= 7.0) or Valkey primary.

    ``url`` is a redis-py URL (``redis://host:port/db``, ``rediss://`` for TLS,
    ``unix:///path``). ``op_timeout`` bounds every call; ``pool_size`` bounds the command
    connections (callers beyond it wait, at most ``op_timeout``); ``keepalive`` is the pub/sub
    ping interval; ``reconnect_max_delay`` caps the pub/sub reconnection backoff.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "kith:",
        op_timeout: float = 3.0,
        pool_size: int = 32,
        keepalive: float = 5.0,
        reconnect_max_delay: float = 2.0,
    ) -> None:
        if not prefix or not isinstance(prefix, str):
            raise ConfigError("redis key prefix must be a non-empty string")
        if op_timeout <= 0 or keepalive <= 0 or reconnect_max_delay <= 0 or pool_size < 1:
            raise ConfigError("redis timeouts and pool size must be positive")
        common: dict[str, Any] = {
            "timeout": op_timeout,
            "socket_timeout": op_timeout,
            "socket_connect_timeout": min(op_timeout, 2.0),
            "health_check_interval": 0,
            "decode_responses": False,
        }
        try:
            # Reads: one retry on a fresh connection (see above).
            self._pool = BlockingConnectionPool.from_url(
                url, max_connections=pool_size, retry=Retry(NoBackoff(), 1), **common
            )
            # Pub/sub: no retry. redis-py would reconnect and re-subscribe silently, and the
            # subscriber task would miss the gap it must cover with catch-up hints.
            self._sub_pool = BlockingConnectionPool.from_url(
                url, max_connections=2, retry=Retry(NoBackoff(), 0), **common
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid redis url: {exc}") from exc
        self._client = Redis(connection_pool=self._pool)
        self._sub_client = Redis(connection_pool=self._sub_pool)
        self._prefix = prefix
        self._op_timeout = op_timeout
        self._keepalive = keepalive
        self._reconnect_max_delay = reconnect_max_delay
        self._token = secrets.token_hex(8).encode()
        self._channel_prefix = f"{prefix}n:".encode()
        self._ctl_channel = f"{prefix}ctl".encode()
        self._stats_key = f"{prefix}st"
        self._expiry_key = f"{prefix}x"
        self._use_key = f"{prefix}u"
        self._marks = UseMarks()
        # Reads: redis-py's Script objects reload themselves after NOSCRIPT (order is moot).
        self._by_sender = self._client.register_script(_BY_SENDER)
        self._pending = self._client.register_script(_PENDING)
        # Writes: sent by the write lane, which loads them on each connection first.
        self._write_scripts = (
            _CREATE,
            _SECURE,
            _DELETE,
            _PUT,
            _ACK,
            _EXPIRE,
            _TOUCH,
            _EXPIRE_QUEUES,
        )
        self._sha = {src: self._client.register_script(src).sha for src in self._write_scripts}
        self._lane_conn: AbstractConnection = self._pool.connection_class(
            **self._pool.connection_kwargs
        )
        self._lane: deque[tuple[Sequence[EncodableT], asyncio.Future[Any]]] = deque()
        self._lane_wake = asyncio.Event()
        self._lane_task: asyncio.Task[None] | None = None
        self._lane_ready = False  # connected and scripts loaded on this connection
        self._watchers = Watchers()
        self._notify: NotifyFn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None
        self._sub_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._connected = asyncio.Event()
        self._owe_hints = False
        self._running = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, notify: NotifyFn) -> None:
        """Check that Redis is reachable and new enough, then start the subscriber.

        Fails closed: a relay whose store is unreachable at start-up does not start.
        """
        if self._closed or self._running:
            raise StoreUnavailable("store already started or closed")
        self._loop = asyncio.get_running_loop()
        self._notify = notify
        try:
            info: dict[str, Any] = await self._call(lambda: self._client.info("server"))
            raw = info.get("redis_version", "0")
            version = tuple(int(x) for x in str(raw).split(".")[:2] if x.isdigit())
            if version < MIN_REDIS_VERSION:
                raise ConfigError(f"redis {raw} is too old; kith needs 7.0 or later")
        except BaseException:
            await self.close()
            raise
        self._running = True
        self._lane_task = asyncio.create_task(self._lane_forever())
        self._subscriber = asyncio.create_task(self._subscribe_forever())
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._connected.wait()
        except TimeoutError:
            await self.close()
            raise StoreUnavailable("redis pub/sub did not connect") from None

    async def close(self) -> None:
        """Stop the subscriber and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._watchers.clear()
        if self._lane_task is not None:
            # Writes already queued finish (or fail) first: the lane answers in order, so
            # once a PING queued behind them is answered, they are done.
            with contextlib.suppress(TimeoutError, StoreUnavailable):
                async with asyncio.timeout(self._op_timeout):
                    await self._enqueue(("PING",))
            self._lane_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lane_task
        while self._lane:
            _, fut = self._lane.popleft()
            if not fut.done():
                fut.set_exception(StoreUnavailable("store is closed"))
        self._running = False
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
        with contextlib.suppress(RedisError, OSError):
            await self._lane_conn.disconnect()
        for client, pool in ((self._client, self._pool), (self._sub_client, self._sub_pool)):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
            with contextlib.suppress(RedisError, OSError):
                await pool.disconnect()

    @property
    def pubsub_connected(self) -> bool:
        """Whether hints from other relay processes are currently arriving (for health checks)."""
        return self._connected.is_set()

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis round trip under the deadline; any failure is StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        try:
            async with asyncio.timeout(self._op_timeout):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self._owe_hints = True
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from exc
        self._settle()
        return result

    def _settle(self) -> None:
        """A call succeeded: if an earlier one failed, hint every watched queue once."""
        if self._owe_hints and self._loop is not None:
            self._owe_hints = False
            self._loop.call_soon(self._hint_all)

    def _hint_all(self) -> None:
        for rid in self._watchers.ids():
            self._hint(rid)

    async def _write(self, script: str, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Queue one write script call *now* (this fixes its order) and await its reply."""
        if self._closed or not self._running:
            raise StoreUnavailable("store is not running")
        fut = self._enqueue(("EVALSHA", self._sha[script], len(keys), *keys, *args))
        try:
            async with asyncio.timeout(self._op_timeout):
                result = await fut
        except TimeoutError:
            self._owe_hints = True
            raise StoreUnavailable("redis did not answer in time") from None
        except StoreUnavailable:
            self._owe_hints = True
            raise
        self._settle()
        return result

    def _enqueue(self, cmd: Sequence[EncodableT]) -> asyncio.Future[Any]:
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._lane.append((cmd, fut))
        self._lane_wake.set()
        return fut

    async def _lane_forever(self) -> None:
        while True:
            if not self._lane:
                self._lane_wake.clear()
                await self._lane_wake.wait()
                continue
            batch: list[tuple[Sequence[EncodableT], asyncio.Future[Any]]] = []
            while self._lane and len(batch) < _LANE_BATCH:
                cmd, fut = self._lane.popleft()
                if not fut.done():  # a caller that timed out is not sent late
                    batch.append((cmd, fut))
            if not batch:
                continue
            try:
                async with asyncio.timeout(self._op_timeout):
                    replies = await self._lane_send([cmd for cmd, _ in batch])
            except (RedisError, OSError, TimeoutError) as exc:
                self._lane_ready = False
                with contextlib.suppress(RedisError, OSError):
                    await self._lane_conn.disconnect(nowait=True)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(
                            StoreUnavailable(f"redis unavailable: {type(exc).__name__}")
                        )
                continue
            for (_, fut), reply in zip(batch, replies, strict=True):
                if fut.done():
                    continue
                if isinstance(reply, ResponseError):
                    if isinstance(reply, NoScriptError):  # SCRIPT FLUSH under our feet
                        self._lane_ready = False
                    fut.set_exception(StoreUnavailable(f"redis refused: {reply}"))
                else:
                    fut.set_result(reply)

    async def _lane_send(self, cmds: list[Sequence[EncodableT]]) -> list[Any]:
        """Send ``cmds`` as one pipeline on the lane's connection; replies in order."""
        conn = self._lane_conn
        if self._lane_ready:
            try:
                # A restarted server leaves us a closed socket; notice before sending.
                if await conn.can_read():
                    raise RedisConnectionError("unexpected data on the write lane")
            except RedisConnectionError:
                self._lane_ready = False
                await conn.disconnect(nowait=True)
        preload: list[Sequence[EncodableT]] = []
        if not self._lane_ready:
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            preload = [("SCRIPT", "LOAD", src) for src in self._write_scripts]
        todo = preload + cmds
        # hiredis packs in C; redis-py's own packer is pure Python and dominated the lane.
        packed = b"".join(hiredis.pack_command(tuple(cmd)) for cmd in todo)  # type: ignore[arg-type]  # hiredis stub types it as a 1-tuple
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in todo:
            try:
                # No per-read timer: the caller's deadline bounds the whole batch.
                replies.append(await conn.read_response(timeout=math.inf))
            except ResponseError as exc:  # an error reply; the connection is still in step
                replies.append(exc)
        if preload:
            if any(isinstance(r, ResponseError) for r in replies[: len(preload)]):
                raise RedisConnectionError("redis refused to load the relay scripts")
            self._lane_ready = True
        return replies[len(preload) :]

    def _keys(self, rid_hex: str) -> tuple[str, str, str]:
        p = self._prefix
        return f"{p}q:{rid_hex}", f"{p}m:{rid_hex}", f"{p}z:{rid_hex}"

    # ------------------------------------------------------------------ queues

    async def create_queue(self, record: QueueRecord, now: int) -> None:
        rid = check_id("recipient_id", record.recipient_id).hex()
        sid = check_id("sender_id", record.sender_id).hex()
        rkey = check_body(record.recipient_key)
        skey = record.sender_key
        q = self._keys(rid)[0]
        ok = await self._write(
            _CREATE,
            [q, f"{self._prefix}s:{sid}", self._stats_key, self._use_key],
            [
                rid,
                sid,
                rkey,
                skey or b"",
                "0" if skey is None else "1",
                int(now),
                use_mark(now),
            ],
        )
        if ok != 1:
            raise DuplicateId("queue id already in use")

    async def queue_by_recipient(self, recipient_id: bytes) -> QueueRecord | None:
        rid = check_id("recipient_id", recipient_id)
        q = self._keys(rid.hex())[0]
        sid, rkey, skey = await self._call(lambda: self._client.hmget(q, ["sid", "rk", "sk"]))
        if sid is None:
            return None
        return QueueRecord(rid, bytes.fromhex(_b(sid).decode()), _b(rkey), _opt_b(skey))

    async def queue_by_sender(self, sender_id: bytes) -> QueueRecord | None:
        sid = check_id("sender_id", sender_id)
        s = f"{self._prefix}s:{sid.hex()}"
        row = await self._call(lambda: self._by_sender(keys=[s], args=[self._prefix]))
        if not row:
            return None
        rid, sid_hex, rkey, skey = row
        return QueueRecord(
            bytes.fromhex(_b(rid).decode()),
            bytes.fromhex(_b(sid_hex).decode()),
            _b(rkey),
            _opt_b(skey),
        )

    async def secure_queue(self, recipient_id: bytes, sender_key: bytes) -> None:
        q = self._keys(check_id("recipient_id", recipient_id).hex())[0]
        key = check_body(sender_key)
        result = await self._write(_SECURE, [q], [key])
        if result == -1:
            raise NoQueue("no such queue")
        if result == 0:
            raise AlreadySecured("queue already has another sender key")

    async def delete_queue(self, recipient_id: bytes) -> None:
        rid = check_id("recipient_id", recipient_id).hex()
        q, m, z = self._keys(rid)
        keys = [q, m, z, self._expiry_key, self._stats_key, self._use_key]
        if await self._write(_DELETE, keys, [rid, self._prefix]) != 1:
            raise NoQueue("no such queue")

    # ------------------------------------------------------------------ messages

    async def put_message(
        self,
        sender_id: bytes,
        msg_id: bytes,
        body: bytes,
        now: int,
        limits: Limits,
        sender_key: bytes | None = None,
        *,
        accepted: AcceptFn | None = None,  # no staging here: never called
    ) -> StoredRef:
        sid = check_id("sender_id", sender_id).hex()
        mid = check_id("msg_id", msg_id).hex()
        data = check_body(body)
        keys = [f"{self._prefix}s:{sid}", self._expiry_key, self._stats_key, self._use_key]
        args: list[EncodableT] = [
            self._prefix,
            mid,
            int(now),
            data,
            limits.max_messages,
            limits.max_bytes,
            sender_key or b"",
            "0" if sender_key is None else "1",
            self._token,
            use_mark(now),
            limits.max_store_bytes,
        ]
        result = await self._write(_PUT, keys, args)
        code = result[0]
        if code == 4:
            rid = bytes.fromhex(result[1].decode())
            seq = int(result[2])
            if rid in self._watchers and self._loop is not None:
                hint_after_caller(self._loop, self._hint, rid, seq)
            return StoredRef(rid, seq, int(now))
        if code == 1:
            raise NotAuthorized("queue is secured")
        if code == 2:
            raise QuotaExceeded("queue is full")
        if code == 3:
            raise DuplicateId("message id already in this queue")
        raise NoQueue("no such queue")

    async def pending(
        self, recipient_id: bytes, after_seq: int, limit: int, now: int, limits: Limits
    ) -> list[StoredMessage]:
        rid = check_id("recipient_id", recipient_id).hex()
        check_count("limit", limit)
        if limit == 0:
            if await self.queue_by_recipient(recipient_id) is None:
                raise NoQueue("no such queue")
            return []
        q, m, z = self._keys(rid)
        keys = [q, z, m]
        args = [int(after_seq), limit, expiry_cutoff(now, limits), _PAGE]
        flat = await self._call(lambda: self._pending(keys=keys, args=args))
        if flat is None:
            raise NoQueue("no such queue")
        out = []
        for i in range(0, len(flat), 2):
            seq, received_at, data = flat[i + 1].split(b":", 2)
            out.append(
                StoredMessage(int(seq), bytes.fromhex(flat[i].decode()), int(received_at), data)
            )
        # Delivery matters more than the mark: if the write fails, the read still stands and
        # the mark is written by the next pending or by the sweep's touch_queues.
        with contextlib.suppress(StoreUnavailable):
            await self.touch_queues((recipient_id,), now)
        return out

    async def ack(self, recipient_id: bytes, msg_id: bytes) -> bool:
        rid = check_id("recipient_id", recipient_id).hex()
        mid = check_id("msg_id", msg_id).hex()
        q, m, z = self._keys(rid)
        keys = [q, m, z, self._expiry_key, self._stats_key]
        result = await self._write(_ACK, keys, [mid, rid])
        if result == -1:
            raise NoQueue("no such queue")
        return bool(result == 1)

    async def expire(self, now: int, limits: Limits) -> int:
        """Delete expired messages in batches of a few hundred, so no script runs long."""
        keys = [self._expiry_key, self._stats_key]
        args: list[EncodableT] = [self._prefix, expiry_cutoff(now, limits), _EXPIRE_BATCH]
        total = 0
        while True:
            seen, deleted = await self._write(_EXPIRE, keys, args)
            total += int(deleted)
            if int(seen) < _EXPIRE_BATCH:
                return total

    async def touch_queues(self, recipient_ids: Iterable[bytes], now: int) -> None:
        ids = [check_id("recipient_id", r) for r in recipient_ids]
        mark, due = self._marks.due(ids, now)
        for start in range(0, len(due), _PAGE):
            chunk = due[start : start + _PAGE]
            args: list[EncodableT] = [self._prefix, mark, *(r.hex() for r in chunk)]
            await self._write(_TOUCH, [self._use_key], args)
            self._marks.written(chunk, mark)

    async def expire_queues(self, now: int, limits: Limits) -> int:
        """Delete idle queues a few at a time, so no script runs long."""
        keys = [self._use_key, self._expiry_key, self._stats_key]
        args: list[EncodableT] = [self._prefix, idle_cutoff(now, limits), _IDLE_BATCH]
        total = 0
        while True:
            seen, deleted = await self._write(_EXPIRE_QUEUES, keys, args)
            total += int(deleted)
            if int(seen) < _IDLE_BATCH:
                return total

    def counters(self) -> dict[str, int]:
        return {}

    async def stats(self) -> dict[str, int]:
        values = await self._call(
            lambda: self._client.hmget(self._stats_key, ["queues", "messages", "bytes"])
        )
        q, m, b = (int(v) if v is not None else 0 for v in values)
        return {"queues": q, "messages": m, "bytes": b}

    # ------------------------------------------------------------------ hints

    def _channel(self, recipient_id: bytes) -> bytes:
        return self._channel_prefix + recipient_id.hex().encode()

    def _hint(self, recipient_id: bytes, seq: int | None = None) -> None:
        if self._notify is None or not self._running:
            return
        try:
            self._notify(recipient_id, seq)
        except Exception:  # a faulty callback must not stop hints for every other queue
            log.exception("relay notify callback failed")

    async def watch(self, recipient_id: bytes) -> None:
        """Deliver hints for this queue from now on, including puts by other processes.

        Returns once Redis has confirmed the subscription, so a put that Redis executes after
        ``watch`` returns is hinted. If the pub/sub connection is down, the interest is kept
        and takes effect on reconnection, followed by a catch-up hint; ``watch`` never fails
        for an outage (that would silence the subscriber after Redis returns).
        """
        if self._closed:
            raise StoreUnavailable("store is closed")
        rid = check_id("recipient_id", recipient_id)
        if not self._watchers.add(rid):
            return
        ps = self._pubsub
        if ps is None or self._loop is None:
            return
        channel = self._channel(rid)
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._sub_waiters.setdefault(channel, []).append(waiter)
        try:
            async with asyncio.timeout(self._op_timeout):
                await ps.subscribe(channel)
                await waiter
        except (RedisError, OSError, TimeoutError):
            pass  # the subscriber task reconnects, re-subscribes and sends a catch-up hint
        finally:
            waiters = self._sub_waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._sub_waiters.pop(channel, None)

    async def unwatch(self, recipient_id: bytes) -> None:
        if self._closed:
            raise StoreUnavailable("store is closed")
        rid = check_id("recipient_id", recipient_id)
        if not self._watchers.remove(rid):
            return
        ps = self._pubsub
        if ps is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._op_timeout):
                await ps.unsubscribe(self._channel(rid))

    async def _subscribe_forever(self) -> None:
        delay = 0.05
        while self._running:
            ps = self._sub_client.pubsub()
            try:
                await self._serve(ps)
            except (RedisError, OSError, TimeoutError, _StalePubSub):
                pass
            finally:
                self._pubsub = None
                if self._connected.is_set():
                    delay = 0.05
                self._connected.clear()
                for waiters in self._sub_waiters.values():
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
                with contextlib.suppress(RedisError, OSError):
                    await ps.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_delay)

    async def _serve(self, ps: PubSub) -> None:
        """One pub/sub connection's life: subscribe, catch up, relay hints until it fails."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._op_timeout):
            await ps.subscribe(self._ctl_channel)
        self._pubsub = ps  # from here on, watch() subscribes by itself
        channels = [self._channel(rid) for rid in self._watchers.ids()]
        # Thousands of watched queues take longer to confirm than one command.
        async with asyncio.timeout(self._op_timeout + len(channels) / 5000):
            for i in range(0, len(channels), 1000):
                await ps.subscribe(*channels[i : i + 1000])
            # Redis answers in order: once this PONG is back, every SUBSCRIBE above is in force.
            await ps.ping(self._token)
            while True:
                msg = await ps.get_message(timeout=self._op_timeout)
                if msg is not None and self._dispatch(msg):
                    break
        self._connected.set()
        self._hint_all()
        last_rx = loop.time()
        ping_sent = False
        while True:
            msg = await ps.get_message(timeout=self._keepalive)
            now = loop.time()
            if msg is not None:
                last_rx, ping_sent = now, False
                self._dispatch(msg)
            elif now - last_rx >= 2 * self._keepalive and ping_sent:
                raise _StalePubSub
            elif now - last_rx >= self._keepalive and not ping_sent:
                await ps.ping(self._token)
                ping_sent = True

    def _dispatch(self, msg: dict[str, Any]) -> bool:
        """Handle one pub/sub event; True if it is the PONG to our own ping."""
        kind = msg.get("type")
        channel = msg.get("channel")
        if kind == "message" and isinstance(channel, bytes):
            if msg.get("data") == self._token:
                return False  # our own put: its hint was scheduled locally
            if channel.startswith(self._channel_prefix):
                try:
                    rid = bytes.fromhex(channel[len(self._channel_prefix) :].decode())
                except ValueError:
                    return False
                if rid in self._watchers:
                    self._hint(rid)
        elif kind == "subscribe" and isinstance(channel, bytes):
            for w in self._sub_waiters.pop(channel, []):
                if not w.done():
                    w.set_result(None)
        elif kind == "pong":
            return msg.get("data") == self._token
        return False
