"""An async client for one relay connection.

This is the transport the client service drives: it speaks the frames of
:mod:`kith.protocol.relay` over one WebSocket, matches replies to commands by ``corr_id`` (so
commands can be pipelined), and hands pushed messages to a queue the caller reads.

Every refusal by the relay becomes :class:`RelayRefused` with the relay's error code; a relay
that sends garbage becomes :class:`RelayProtocolError` and the connection is closed (a relay
that breaks the protocol is not trusted with the rest of the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from kith.crypto.signing import SigningKey
from kith.errors import KithError, RemoteProtocolError
from kith.protocol import relay as p

R = TypeVar("R", bound=p.Reply)


class RelayError(KithError):
    """Base of errors talking to a relay."""


class RelayUnreachable(RelayError):
    """The relay could not be reached or the connection dropped."""


class RelayProtocolError(RelayError, RemoteProtocolError):
    """The relay sent something that is not valid protocol."""


class RelayRefused(RelayError):
    """The relay answered a command with an ERR frame."""

    def __init__(self, code: p.ErrorCode) -> None:
        super().__init__(f"relay refused: {code.name.lower().replace('_', ' ')}")
        self.code = code


def socks5h(proxy: str) -> str:
    """Normalise a SOCKS5 proxy URL so names resolve at the proxy; refuse anything else."""
    scheme, sep, rest = proxy.partition("://")
    if not sep or scheme.lower() not in ("socks5", "socks5h") or not rest:
        raise RelayError("proxy must be a SOCKS5 URL such as socks5h://127.0.0.1:9050")
    return "socks5h://" + rest


class RelayClient:
    """One WebSocket connection to a relay. Create with :meth:`connect`."""

    def __init__(self, ws: ClientConnection, hello: p.Hello) -> None:
        self._ws = ws
        self.hello = hello
        self._corr = itertools.count(0)
        #: Subscribed queues and how many pushed messages each has unacknowledged. A relay may
        #: push at most ``hello.window`` per queue; more than twice that (see ``_read``) is a
        #: protocol violation (a hostile relay
        #: must not fill this process's memory), and pushes for queues we did not subscribe on
        #: this connection are dropped.
        self._unacked: dict[bytes, int] = {}
        self.dropped = 0
        self.unmatched = 0  # replies that no call was waiting for (see _read)
        self._waiting: dict[int, asyncio.Future[p.Reply]] = {}
        self.messages: asyncio.Queue[p.Msg] = asyncio.Queue()
        self.ended: asyncio.Queue[bytes] = asyncio.Queue()
        #: Called (synchronously) with the recipient id when the relay says another connection
        #: took over that queue's subscription (END).
        self.on_end: Callable[[bytes], None] | None = None
        self._reader = asyncio.create_task(self._read())
        self._failure: RelayError | None = None

    @classmethod
    async def connect(
        cls, url: str, *, timeout: float = 10.0, proxy: str | None = None
    ) -> RelayClient:
        """Connect and read the relay's HELLO. ``proxy`` is e.g. ``socks5h://127.0.0.1:9050``.

        A ``socks5://`` proxy is used as ``socks5h://``: the relay's host name is always resolved
        by the proxy (Tor), never by the local resolver, which would tell the local network and
        its DNS servers which relay this device talks to. Other proxy schemes are refused.
        """
        if proxy is not None:
            proxy = socks5h(proxy)
        try:
            async with asyncio.timeout(timeout):
                kwargs: dict[str, Any] = {
                    "compression": None,
                    "max_size": p.max_frame_size(p.MAX_BLOCK_SIZE),
                    "open_timeout": timeout,
                    # A relay that does not finish the closing handshake promptly is cut off.
                    "close_timeout": 2,
                    "user_agent_header": None,
                }
                # Never pick up a proxy from the environment by accident: only an explicit one.
                kwargs["proxy"] = proxy
                ws = await connect(url, **kwargs)
                first = await ws.recv()
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            raise RelayUnreachable(f"cannot reach relay: {type(exc).__name__}") from exc
        try:
            if isinstance(first, str):
                raise p.FrameError(p.ErrorCode.MALFORMED, "text frame")
            hello = p.decode_reply(first)
            if not isinstance(hello, p.Hello):
                raise p.FrameError(p.ErrorCode.MALFORMED, "first frame is not HELLO")
            if not hello.min_version <= p.VERSION <= hello.max_version:
                raise p.FrameError(p.ErrorCode.VERSION, "relay speaks no common version")
        except p.FrameError as exc:
            await ws.close()
            raise RelayProtocolError(str(exc)) from exc
        return cls(ws, hello)

    @property
    def block_size(self) -> int:
        return self.hello.block_size

    # ------------------------------------------------------------------ commands

    async def ping(self) -> None:
        await self._call(p.Ping, p.Pong)

    async def create_queue(self, recipient_key: SigningKey) -> tuple[bytes, bytes]:
        """Create a queue owned by ``recipient_key``; returns (recipient_id, sender_id)."""
        ids = await self._call(lambda c: p.New(c, recipient_key.public_key), p.Ids)
        return ids.recipient_id, ids.sender_id

    async def subscribe(self, recipient_id: bytes, recipient_key: SigningKey) -> None:
        payload = p.auth_payload(p.FrameType.SUB, self.hello.challenge, recipient_id)
        sig = recipient_key.sign(payload)
        # Registered before the SUB leaves: the relay pushes right behind its OK.
        self._unacked[recipient_id] = 0
        try:
            await self._call(lambda c: p.Sub(c, recipient_id, sig), p.Ok)
        except BaseException:
            self._unacked.pop(recipient_id, None)
            raise

    async def secure(
        self, recipient_id: bytes, recipient_key: SigningKey, sender_public_key: bytes
    ) -> None:
        payload = p.auth_payload(
            p.FrameType.KEY, self.hello.challenge, recipient_id, sender_public_key
        )
        sig = recipient_key.sign(payload)
        await self._call(lambda c: p.Key(c, recipient_id, sender_public_key, sig), p.Ok)

    async def sender_auth(self, sender_id: bytes, sender_key: SigningKey) -> None:
        sig = sender_key.sign(p.auth_payload(p.FrameType.SAUTH, self.hello.challenge, sender_id))
        await self._call(lambda c: p.SAuth(c, sender_id, sig), p.Ok)

    async def send(self, sender_id: bytes, body: bytes) -> None:
        """Send one block. ``body`` must be exactly :attr:`block_size` bytes (already sealed)."""
        if len(body) != self.block_size:
            raise ValueError(f"body must be exactly {self.block_size} bytes")
        await self._call(lambda c: p.Send(c, sender_id, body), p.Ok)

    async def ack(self, recipient_id: bytes, msg_id: bytes, *, quiet: bool = False) -> None:
        """Acknowledge a pushed message. ``quiet``: send a QACK and return once it is sent;
        the relay answers only a failure, which is then dropped like a late reply (the
        message simply comes again, and the caller drops the duplicate)."""
        if self._unacked.get(recipient_id, 0) > 0:
            self._unacked[recipient_id] -= 1  # the relay may refill the window at once
        if not quiet:
            await self._call(lambda c: p.Ack(c, recipient_id, msg_id), p.Ok)
            return
        if self._failure is not None:
            raise self._failure
        corr = self._next_corr()
        try:
            await self._ws.send(p.encode(p.Ack(corr, recipient_id, msg_id, quiet=True)))
        except ConnectionClosed as exc:
            raise RelayUnreachable("connection to relay lost") from exc

    async def delete_queue(self, recipient_id: bytes, recipient_key: SigningKey) -> None:
        payload = p.auth_payload(p.FrameType.DEL, self.hello.challenge, recipient_id)
        sig = recipient_key.sign(payload)
        await self._call(lambda c: p.Del(c, recipient_id, sig), p.Ok)
        self._unacked.pop(recipient_id, None)

    async def next_message(self, timeout: float | None = None) -> p.Msg:
        """Wait for the next pushed message."""
        async with asyncio.timeout(timeout):
            while True:
                if self._failure is not None and self.messages.empty():
                    raise self._failure
                getter = asyncio.ensure_future(self.messages.get())
                try:
                    done, _ = await asyncio.wait(
                        {getter, self._reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                except BaseException:
                    getter.cancel()  # cancelled or timed out: leave no orphaned getter behind
                    raise
                if getter in done:
                    return getter.result()
                getter.cancel()

    async def iter_messages(self) -> AsyncIterator[p.Msg]:
        while True:
            yield await self.next_message()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._ws.close()
        self._fail(RelayUnreachable("connection closed"))

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _next_corr(self) -> int:
        """corr_ids run 1..2**32-1 and wrap, never 0 (the relay's own frames carry 0)."""
        return next(self._corr) % 0xFFFFFFFF + 1

    async def _call(self, build: Any, want: type[R]) -> R:
        if self._failure is not None:
            raise self._failure
        corr = self._next_corr()
        frame = build(corr)
        fut: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._waiting[corr] = fut
        try:
            await self._ws.send(p.encode(frame))
            reply = await fut
        except ConnectionClosed as exc:
            raise RelayUnreachable("connection to relay lost") from exc
        finally:
            self._waiting.pop(corr, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark a failure set by the reader as seen
            else:
                fut.cancel()
        if isinstance(reply, p.Err):
            raise RelayRefused(reply.code)
        if not isinstance(reply, want):
            raise RelayProtocolError(f"expected {want.__name__}, got {type(reply).__name__}")
        return reply

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                if isinstance(data, str):
                    raise p.FrameError(p.ErrorCode.MALFORMED, "text frame from relay")
                reply = p.decode_reply(data, self.hello.block_size)
                if isinstance(reply, p.Msg):
                    count = self._unacked.get(reply.recipient_id)
                    if count is None:
                        self.dropped += 1  # not subscribed here (any more)
                        continue
                    # Twice the window: a re-SUB resets our count while pushes of the previous
                    # subscription (refills after ACKs) may still be on the wire, and an honest
                    # relay must not be cut off for that race. Memory stays bounded either way.
                    if count >= 2 * self.hello.window:
                        raise p.FrameError(p.ErrorCode.MALFORMED, "pushes beyond the window")
                    self._unacked[reply.recipient_id] = count + 1
                    self.messages.put_nowait(reply)
                elif isinstance(reply, p.End):
                    if self._unacked.pop(reply.recipient_id, None) is None:
                        continue
                    self.ended.put_nowait(reply.recipient_id)
                    if self.on_end is not None:
                        self.on_end(reply.recipient_id)
                elif isinstance(reply, p.Hello):
                    raise p.FrameError(p.ErrorCode.MALFORMED, "second HELLO")
                else:
                    fut = self._waiting.get(reply.corr_id)
                    if fut is None:
                        # Nothing waits for it: the ERR of a quiet ACK, or a late reply to a
                        # call that was cancelled. (corr_ids wrap after 2**32 commands, so a
                        # reply cannot be told from a made-up one; either way it is dropped.)
                        self.unmatched += 1
                        continue
                    if not fut.done():
                        fut.set_result(reply)
            self._fail(RelayUnreachable("relay closed the connection"))
        except ConnectionClosed:
            self._fail(RelayUnreachable("connection to relay lost"))
        except p.FrameError as exc:
            self._fail(RelayProtocolError(f"relay broke the protocol: {exc}"))
            # No closing handshake with a relay that broke the protocol: it could stall it.
            self._ws.transport.abort()

    def _fail(self, exc: RelayError) -> None:
        if self._failure is None:
            self._failure = exc
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(self._failure)
