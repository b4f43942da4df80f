"""Load benchmark: the kith relay against a bare WebSocket forwarder, on 127.0.0.1 only.

Why this exists: a relay that stores, authorises and acknowledges every message must still keep
up with the plain cost of moving bytes between sockets in Python, or communities that depend on
a small volunteer-run relay hit its ceiling first. This script measures both under the same
load generator and prints the figures; it asserts nothing (see docs/performance.md).

What runs, per target (each a fresh server process):

- the server: ``kith relay serve`` (SQLite by default; memory and Redis by flag) or a bare
  forwarder built here on the ``websockets`` asyncio server (no storage, auth or padding);
- subscriber processes holding N connections, each owning one queue (kith: NEW, SUB, KEY, so
  the queue is *secured* and every SEND goes through the sender-key check) and ACKing every
  message it is pushed;
- one sender process with S connections; each kith sender connection SAUTHs for its queues,
  then SENDs are pipelined, round-robin over all queues.

The sender keeps at most ``--inflight`` messages sent but not yet delivered (subscribers publish
their delivery counts in shared memory), so backlogs stay far below the relay's per-queue quota
and the window, and "saturation" means the server, not a queue limit, sets the pace.

Figures: delivered messages/s at saturation (median of ``--repeats`` windows after a warm-up),
p50/p99 send-to-push latency at a fixed offered load (median over the same rounds; the sender
writes CLOCK_MONOTONIC nanoseconds into the body; the subscriber, on the same machine,
subtracts), the server's CPU
(user+sys seconds per wall second, /proc/PID/stat) and peak RSS (VmHWM), and the RSS of a
server holding ``--idle`` idle subscribed connections.

Run: ``.venv/bin/python bench/relay_load.py`` (about 3 minutes), ``--quick`` (about 1 minute),
``--stores sqlite,memory,redis`` for every backend (about 8 minutes). Ctrl-C stops and cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

from _common import (
    LOCALHOST,
    BenchError,
    CpuMeter,
    WsClient,
    cpu_probe,
    free_port,
    load_average,
    machine,
    median,
    peak_rss_mib,
    percentile,
    raise_nofile,
    read_ready_line,
    rss_mib,
    stop_process,
    wait_for_port,
    ws_connect,
)

from kith.crypto.signing import SigningKey
from kith.protocol import relay as p

Ctrl = multiprocessing.connection.Connection
Shared = ctypes.c_int64

# Bare forwarder frames: client -> server  SUB 0x01 | queue 16 B ; SEND 0x02 | queue 16 B | body ;
# ACK 0x03 | queue 16 B | 16 B (read and dropped) ; server -> client  SUBSCRIBED 0x81 ; body.
_BARE_SUB: Final = 0x01
_BARE_SEND: Final = 0x02
_BARE_ACK: Final = 0x03
_BARE_SUBSCRIBED: Final = b"\x81"
_QID_LEN: Final = 16

_HDR = struct.Struct(">BBI")
_SEND_TYPE: Final = int(p.FrameType.SEND)
_ACK_TYPE: Final = int(p.FrameType.QACK)  # as the kith client acknowledges: no OK back
_MSG_TYPE: Final = int(p.FrameType.MSG)
_OK_TYPE: Final = int(p.FrameType.OK)
_ERR_TYPE: Final = int(p.FrameType.ERR)
_END_TYPE: Final = int(p.FrameType.END)
_HELLO_TYPE: Final = int(p.FrameType.HELLO)
#: Offset of the body in a MSG frame: header, recipient id, msg id, received_at.
_MSG_BODY: Final = p.HEADER_LEN + p.ID_LEN + p.MSG_ID_LEN + 8
#: Body layout written by the sender: timestamp (8 B, monotonic ns), marker (1 B), zeros.
_STAMP: Final = 9
_MEASURED: Final = b"\x01"
_WARMUP: Final = b"\x00"


#: ``--stage-ms`` for the SQLite relays this run starts (None: their default).
STAGE_MS: float | None = None
_READY_RELAY: Final = b"kith relay ready on"
_READY_BARE: Final = b"bare forwarder ready on"
_CALL_TIMEOUT: Final = 30.0
_REPLY_TIMEOUT: Final = 180.0


@dataclass(frozen=True, slots=True)
class Target:
    """One server configuration under test."""

    kind: str  # "kith" or "bare"
    store: str  # kith store name, or "-" for the bare forwarder
    block: int  # message body bytes on the wire

    @property
    def label(self) -> str:
        if self.kind == "bare":
            return f"bare forwarder, {self.block} B payload"
        return f"kith relay, {self.store}, block {self.block} B"

    def wire(self) -> str:
        if self.kind == "bare":
            return f"SEND {1 + _QID_LEN + self.block} B, push {self.block} B"
        return f"SEND {p.HEADER_LEN + p.ID_LEN + self.block} B, MSG {_MSG_BODY + self.block} B"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    kind: str
    port: int
    block: int
    connections: int
    concurrency: int = 50


@dataclass(slots=True)
class Throughput:
    target: Target
    runs: list[float] = field(default_factory=list)
    relay_cpu: list[float] = field(default_factory=list)
    store_cpu: list[float] = field(default_factory=list)
    gen_cpu: list[float] = field(default_factory=list)
    #: one entry per latency round
    offered: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    cpu_at: list[float] = field(default_factory=list)
    samples: int = 0
    peak_rss_mib: float = float("nan")
    rss_mib: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    undelivered: int = 0
    setup_s: float = 0.0
    store_peak_rss_mib: float = float("nan")

    @property
    def median_rate(self) -> float:
        return median(self.runs)

    @property
    def p50_ms(self) -> float:
        return median(self.p50s)

    @property
    def p99_ms(self) -> float:
        return median(self.p99s)

    @property
    def cpu_at_rate(self) -> float:
        return median(self.cpu_at)

    @property
    def us_per_msg(self) -> float:
        """Server CPU microseconds per message at the fixed rate (median over rounds)."""
        return median([c * 1e6 / r for c, r in zip(self.cpu_at, self.offered, strict=True) if r])


@dataclass(slots=True)
class Idle:
    target: Target
    connections: int = 0
    failed: int = 0
    baseline_mib: float = float("nan")
    rss_mib: float = float("nan")
    peak_rss_mib: float = float("nan")
    setup_s: float = 0.0
    store_rss_mib: float = float("nan")


# =========================================================================== worker side


@dataclass(slots=True)
class SubStats:
    """Per-process subscriber counters; ``shared`` is what the sender reads for credit."""

    shared: Shared
    total: int = 0
    samples: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def delivered(self, stamp: bytes, now_ns: int) -> None:
        self.total += 1
        self.shared.value = self.total
        if stamp[8:9] == _MEASURED:
            self.samples.append(now_ns - int.from_bytes(stamp[:8], "big"))


class _Peer:
    """Request/reply plumbing shared by the kith roles (corr ids, HELLO, futures)."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.ws: WsClient | None = None
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[p.Hello] = loop.create_future()
        self.waiting: dict[int, asyncio.Future[p.Reply]] = {}
        self.corr = 0

    def next_corr(self) -> int:
        self.corr = (self.corr + 1) & 0xFFFFFFFF
        return self.corr

    def control(self, m: bytes) -> bool:
        """Handle HELLO and replies to calls; False if ``m`` answered no call of ours."""
        if m[1] == _HELLO_TYPE:
            hello = p.decode_reply(m)
            if isinstance(hello, p.Hello) and not self.hello.done():
                self.hello.set_result(hello)
            return True
        fut = self.waiting.pop(int.from_bytes(m[2:6], "big"), None)
        if fut is None:
            return False
        if not fut.done():
            fut.set_result(p.decode_reply(m, self.block))
        return True

    async def start(self, port: int, on_message: Callable[[bytes], None]) -> p.Hello:
        self.ws = await ws_connect(port, on_message)
        async with asyncio.timeout(_CALL_TIMEOUT):
            return await self.hello

    def start_call(self, build: Callable[[int], p.Command]) -> asyncio.Future[p.Reply]:
        assert self.ws is not None
        corr = self.next_corr()
        fut: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self.waiting[corr] = fut
        self.ws.send(p.encode(build(corr)))
        return fut

    async def call(self, build: Callable[[int], p.Command]) -> p.Reply:
        async with asyncio.timeout(_CALL_TIMEOUT):
            reply = await self.start_call(build)
        if isinstance(reply, p.Err):
            raise BenchError(f"relay refused a setup command: {reply.code.name}")
        return reply


class KithSub(_Peer):
    """Owns one queue, subscribes, and ACKs every pushed message."""

    def __init__(self, block: int, stats: SubStats) -> None:
        super().__init__(block)
        self.stats = stats
        self.ack_prefix = bytes((p.VERSION, _ACK_TYPE))

    def on_message(self, m: bytes) -> None:
        kind = m[1]
        if kind == _MSG_TYPE:
            self.stats.delivered(m[_MSG_BODY : _MSG_BODY + _STAMP], time.monotonic_ns())
            assert self.ws is not None
            # ACK body is recipient id + msg id, which sit side by side in the MSG frame.
            self.ws.queue(
                self.ack_prefix + self.next_corr().to_bytes(4, "big") + m[p.HEADER_LEN : 38]
            )
            return
        if self.control(m):
            return
        if kind == _ERR_TYPE:
            self.stats.errors[p.ErrorCode(int.from_bytes(m[6:8], "big")).name] += 1
        elif kind == _END_TYPE:
            self.stats.errors["END"] += 1

    async def setup(self, port: int, idle: bool) -> tuple[bytes, bytes]:
        hello = await self.start(port, self.on_message)
        rkey = SigningKey.generate()
        ids = await self.call(lambda c: p.New(c, rkey.public_key))
        assert isinstance(ids, p.Ids)
        rid = ids.recipient_id
        sig = rkey.sign(p.auth_payload(p.FrameType.SUB, hello.challenge, rid))
        await self.call(lambda c: p.Sub(c, rid, sig))
        if idle:
            return ids.sender_id, b""
        skey = SigningKey.generate()
        sig = rkey.sign(p.auth_payload(p.FrameType.KEY, hello.challenge, rid, skey.public_key))
        await self.call(lambda c: p.Key(c, rid, skey.public_key, sig))
        return ids.sender_id, skey.seed


class BareSub:
    """Names one queue on the bare forwarder and ACKs (a frame the forwarder drops)."""

    def __init__(self, stats: SubStats) -> None:
        self.stats = stats
        self.ws: WsClient | None = None
        self.qid = os.urandom(_QID_LEN)
        self.ack = bytes((_BARE_ACK,)) + self.qid + bytes(16)
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, m: bytes) -> None:
        if m == _BARE_SUBSCRIBED:
            if not self.subscribed.done():
                self.subscribed.set_result(None)
            return
        self.stats.delivered(m[:_STAMP], time.monotonic_ns())
        assert self.ws is not None
        self.ws.queue(self.ack)

    async def setup(self, port: int, idle: bool) -> tuple[bytes, bytes]:
        self.ws = await ws_connect(port, self.on_message)
        self.ws.send(bytes((_BARE_SUB,)) + self.qid)
        async with asyncio.timeout(_CALL_TIMEOUT):
            await self.subscribed
        return self.qid, b""


async def _open_all(
    spec: WorkerSpec, make: Callable[[], KithSub | BareSub], idle: bool
) -> tuple[list[KithSub | BareSub], list[tuple[bytes, bytes]], list[str]]:
    gate = asyncio.Semaphore(spec.concurrency)
    roles = [make() for _ in range(spec.connections)]

    async def one(role: KithSub | BareSub) -> tuple[bytes, bytes]:
        async with gate:
            return await role.setup(spec.port, idle)

    results = await asyncio.gather(*(one(r) for r in roles), return_exceptions=True)
    handles: list[tuple[bytes, bytes]] = []
    errors: list[str] = []
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}")
        else:
            handles.append(r)
    return roles, handles, errors


async def _commands(ctrl: Ctrl) -> AsyncIterator[tuple[Any, ...]]:
    """Commands from the orchestrator; a closed pipe (the parent died) means stop."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    fd = ctrl.fileno()

    def readable() -> None:
        try:
            inbox.put_nowait(ctrl.recv())
        except (EOFError, OSError):
            loop.remove_reader(fd)
            inbox.put_nowait(("stop",))

    loop.add_reader(fd, readable)
    try:
        while True:
            cmd = await inbox.get()
            if cmd[0] == "stop":
                return
            yield cmd
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)


def _worker_entry(run: Callable[[], Any], ctrl: Ctrl) -> None:
    # Ctrl-C reaches the whole process group; the orchestrator stops workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()
    try:
        asyncio.run(run())
    except Exception as exc:
        with contextlib.suppress(OSError):
            ctrl.send(("error", f"{type(exc).__name__}: {exc}"))


def sub_worker(spec: WorkerSpec, shared: Shared, idle: bool, ctrl: Ctrl) -> None:
    """Subscriber process: open, subscribe, ACK everything, report samples on request."""

    async def run() -> None:
        stats = SubStats(shared)

        def make() -> KithSub | BareSub:
            return KithSub(spec.block, stats) if spec.kind == "kith" else BareSub(stats)

        roles, handles, errors = await _open_all(spec, make, idle)
        ctrl.send(("ready", handles, errors))
        try:
            async for cmd in _commands(ctrl):
                if cmd[0] == "samples":
                    samples, stats.samples = stats.samples, []
                    ctrl.send(("samples", samples, dict(stats.errors)))
        finally:
            for role in roles:
                if role.ws is not None:
                    role.ws.abort()

    _worker_entry(run, ctrl)


class KithSend(_Peer):
    def __init__(self, block: int, errors: Counter[str]) -> None:
        super().__init__(block)
        self.errors = errors

    def on_message(self, m: bytes) -> None:
        if m[1] == _OK_TYPE and not self.waiting:
            return
        if self.control(m):
            return
        if m[1] == _ERR_TYPE:
            self.errors[p.ErrorCode(int.from_bytes(m[6:8], "big")).name] += 1


def _sauth(sid: bytes, sig: bytes, corr: int) -> p.SAuth:
    return p.SAuth(corr, sid, sig)


class Generator:
    """Writes SENDs round-robin over every queue, within the in-flight budget."""

    def __init__(
        self,
        kind: str,
        block: int,
        queues: list[tuple[WsClient, bytes]],
        delivered: list[Shared],
        budget: int,
    ) -> None:
        self.kind = kind
        self.pad = bytes(block - _STAMP)
        self.queues = queues
        self.delivered = delivered
        self.budget = budget
        self.sent = 0
        self.next = 0
        self.corr = 0

    def delivered_total(self) -> int:
        return sum(v.value for v in self.delivered)

    def credit(self) -> int:
        return self.budget - (self.sent - self.delivered_total())

    def emit(self, count: int, marker: bytes) -> None:
        dirty: set[WsClient] = set()
        queues, n, pad = self.queues, len(self.queues), self.pad
        kith = self.kind == "kith"
        for _ in range(count):
            ws, qid = queues[self.next]
            self.next = (self.next + 1) % n
            stamp = time.monotonic_ns().to_bytes(8, "big") + marker
            if kith:
                self.corr = (self.corr + 1) & 0xFFFFFFFF
                ws.queue(_HDR.pack(p.VERSION, _SEND_TYPE, self.corr) + qid + stamp + pad)
            else:
                ws.queue(bytes((_BARE_SEND,)) + qid + stamp + pad)
            dirty.add(ws)
        for ws in dirty:
            ws.flush()
        self.sent += count

    async def saturate(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            credit = self.credit()
            if credit <= 0:
                await asyncio.sleep(0.0005)
                continue
            self.emit(min(credit, 256), _WARMUP)
            await asyncio.sleep(0)

    async def paced(self, rate: float, warm: float, window: float) -> float:
        """Offer ``rate`` msg/s; mark messages after ``warm`` s as measured. Returns the
        rate actually offered."""
        t0 = time.monotonic()
        measure_from, end = t0 + warm, t0 + warm + window
        start = self.sent
        while (now := time.monotonic()) < end:
            due = int((now - t0) * rate) - (self.sent - start)
            count = min(due, self.credit(), 512)
            if count > 0:
                self.emit(count, _MEASURED if now >= measure_from else _WARMUP)
            await asyncio.sleep(0.001)
        return (self.sent - start) / (time.monotonic() - t0)


def send_worker(
    spec: WorkerSpec,
    handles: list[tuple[bytes, bytes]],
    delivered: list[Shared],
    budget: int,
    ctrl: Ctrl,
) -> None:
    """Sender process: S connections, SAUTH per queue (kith), then runs on command."""

    async def run() -> None:
        errors: Counter[str] = Counter()
        conns: list[WsClient] = []
        queues: list[tuple[WsClient, bytes]] = []
        if spec.kind == "kith":
            peers = [KithSend(spec.block, errors) for _ in range(spec.connections)]
            hellos = await asyncio.gather(*(s.start(spec.port, s.on_message) for s in peers))
            calls = []
            for i, (sid, seed) in enumerate(handles):
                peer, hello = peers[i % len(peers)], hellos[i % len(peers)]
                sig = SigningKey(seed).sign(p.auth_payload(p.FrameType.SAUTH, hello.challenge, sid))
                calls.append(peer.start_call(functools.partial(_sauth, sid, sig)))
                assert peer.ws is not None
                queues.append((peer.ws, sid))
            async with asyncio.timeout(_CALL_TIMEOUT):
                replies = await asyncio.gather(*calls)
            refused = [r for r in replies if not isinstance(r, p.Ok)]
            if refused:
                raise BenchError(f"{len(refused)} SAUTH refused: {refused[0]}")
            conns = [s.ws for s in peers if s.ws is not None]
        else:
            conns = list(
                await asyncio.gather(
                    *(ws_connect(spec.port, lambda m: None) for _ in range(spec.connections))
                )
            )
            queues = [(conns[i % len(conns)], qid) for i, (qid, _) in enumerate(handles)]
        gen = Generator(spec.kind, spec.block, queues, delivered, budget)
        ctrl.send(("ready",))
        try:
            async for cmd in _commands(ctrl):
                offered = 0.0
                if cmd[0] == "saturate":
                    await gen.saturate(cmd[1])
                elif cmd[0] == "paced":
                    offered = await gen.paced(cmd[1], cmd[2], cmd[3])
                ctrl.send(("done", gen.sent, offered, dict(errors)))
        finally:
            for ws in conns:
                ws.abort()

    _worker_entry(run, ctrl)


# =========================================================================== bare forwarder


def bare_server(port: int) -> None:
    """The baseline: a plain asyncio ``websockets`` forwarder keeping nothing but a dict."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    subscribers: dict[bytes, ServerConnection] = {}

    async def handler(ws: ServerConnection) -> None:
        mine: list[bytes] = []
        try:
            async for msg in ws:
                if not isinstance(msg, bytes) or not msg:
                    continue
                if msg[0] == _BARE_SEND:
                    target = subscribers.get(msg[1 : 1 + _QID_LEN])
                    if target is not None:
                        with contextlib.suppress(ConnectionClosed):
                            await target.send(msg[1 + _QID_LEN :])
                elif msg[0] == _BARE_SUB:
                    qid = msg[1 : 1 + _QID_LEN]
                    subscribers[qid] = ws
                    mine.append(qid)
                    await ws.send(_BARE_SUBSCRIBED)
                # _BARE_ACK: read and dropped.
        except ConnectionClosed:
            pass
        finally:
            for qid in mine:
                if subscribers.get(qid) is ws:
                    del subscribers[qid]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with serve(
            handler,
            LOCALHOST,
            port,
            compression=None,
            max_size=2 * (1 + _QID_LEN + p.MAX_BLOCK_SIZE),
            ping_interval=30,
            ping_timeout=30,
        ) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print(f"bare forwarder ready on {LOCALHOST}:{bound}", flush=True)
            await stop.wait()

    raise_nofile()
    asyncio.run(main())


# =========================================================================== orchestrator


def _die_with_parent() -> None:
    """Child side of Popen: get SIGTERM if the benchmark dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Processes:
    """Every process the benchmark starts, so all of them are stopped on any exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.popen: list[subprocess.Popen[bytes]] = []
        self.workers: list[BaseProcess] = []
        self.ctx = multiprocessing.get_context("spawn")
        self._n = 0

    def start(self, args: Sequence[str], ready: bytes) -> tuple[subprocess.Popen[bytes], int]:
        """Start a server that prints ``<ready> 127.0.0.1:PORT``; return it and the port."""
        self._n += 1
        log = open(self.workdir / f"server-{self._n}.log", "wb")  # noqa: SIM115 -- closed below
        try:
            proc = subprocess.Popen(
                list(args),
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                # Safe here: the orchestrator runs no threads when it starts a process.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        finally:
            log.close()
        self.popen.append(proc)
        try:
            line = read_ready_line(proc, ready, 60)
        except BenchError as exc:
            tail = (self.workdir / f"server-{self._n}.log").read_bytes()[-1500:]
            raise BenchError(f"{exc}; log: {tail!r}") from None
        return proc, int(line.rsplit(b":", 1)[1])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc)
        with contextlib.suppress(ValueError):
            self.popen.remove(proc)

    def spawn(self, target: Callable[..., None], *args: object) -> tuple[BaseProcess, Ctrl]:
        mine, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(*args, theirs), daemon=True)
        proc.start()
        theirs.close()
        self.workers.append(proc)
        return proc, mine

    def stop_workers(self, conns: list[Ctrl], workers: list[BaseProcess]) -> None:
        for c in conns:
            with contextlib.suppress(OSError):
                c.send(("stop",))
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.terminate()
                w.join(5)
            if w.is_alive():
                w.kill()
                w.join(5)
            with contextlib.suppress(ValueError):
                self.workers.remove(w)
        for c in conns:
            c.close()

    def close(self) -> None:
        for w in self.workers:
            if w.is_alive():
                w.terminate()
        for w in self.workers:
            w.join(5)
            if w.is_alive():
                w.kill()
        self.workers.clear()
        for proc in reversed(self.popen):
            stop_process(proc)
        self.popen.clear()


def _expect(conn: Ctrl, what: str, timeout: float = _REPLY_TIMEOUT) -> tuple[Any, ...]:
    if not conn.poll(timeout):
        raise BenchError(f"a worker did not answer {what!r} within {timeout:.0f} s")
    msg: tuple[Any, ...] = conn.recv()
    if msg[0] == "error":
        raise BenchError(f"worker failed: {msg[1]}")
    if msg[0] != what:
        raise BenchError(f"worker answered {msg[0]!r}, expected {what!r}")
    return msg


@dataclass(frozen=True, slots=True)
class Options:
    stores: tuple[str, ...]
    subscribers: int
    senders: int
    sub_procs: int
    idle: int
    idle_procs: int
    rate: float
    repeats: int
    warmup: float
    window: float
    latency_window: float
    inflight: int
    block: int
    small_block: int
    bare_payload: int
    profile: Path | None
    skip_idle: bool
    bare: bool


class Server:
    """A running server under test and, for Redis, its redis-server."""

    def __init__(self, procs: Processes, target: Target, profile: Path | None) -> None:
        self.procs = procs
        self.target = target
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_fsync = ""
        if target.kind == "bare":
            args = [sys.executable, str(Path(__file__).resolve()), "--bare-server"]
            self.proc, self.port = procs.start(args, _READY_BARE)
            return
        args = [
            sys.executable,
            *(["-m", "cProfile", "-o", str(profile)] if profile is not None else []),
            "-m", "kith.cli.main", "relay", "serve", "--host", LOCALHOST, "--port", "0",
            "--store", target.store, "--block-size", str(target.block),
        ]  # fmt: skip
        if target.store == "sqlite":
            db = tempfile.mkdtemp(prefix="sqlite-", dir=procs.workdir)
            args += ["--db", str(Path(db) / "relay.db")]
            if STAGE_MS is not None:
                args += ["--stage-ms", str(STAGE_MS)]
        elif target.store == "redis":
            args += ["--redis-url", self._start_redis()]
        self.proc, self.port = procs.start(args, _READY_RELAY)

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed")
        port = free_port()
        rdir = tempfile.mkdtemp(prefix="redis-", dir=self.procs.workdir)
        self.redis = subprocess.Popen(
            [binary, "--bind", LOCALHOST, "--port", str(port), "--dir", rdir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes",
             "--logfile", str(Path(rdir) / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 -- no threads in the orchestrator
        )  # fmt: skip
        self.procs.popen.append(self.redis)
        wait_for_port(port, 15)
        cli = shutil.which("redis-cli")
        if cli is not None:
            # Report what the server says it runs with, not what was asked for.
            settings = []
            for key in ("appendonly", "appendfsync"):
                out = subprocess.run(
                    [cli, "-h", LOCALHOST, "-p", str(port), "CONFIG", "GET", key],
                    capture_output=True, text=True, timeout=10, check=False,
                )  # fmt: skip
                settings.append(" ".join(out.stdout.split()))
            self.redis_fsync = ", ".join(settings)
        return f"redis://{LOCALHOST}:{port}/0"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    @property
    def store_pids(self) -> list[int]:
        return [self.redis.pid] if self.redis is not None else []

    def stop(self) -> None:
        self.procs.stop(self.proc)
        if self.redis is not None:
            self.procs.stop(self.redis)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _drain(delivered: list[Shared], sent: int, timeout: float) -> int:
    """Wait until everything sent was delivered; return how many were not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(v.value for v in delivered) >= sent:
            return 0
        time.sleep(0.05)
    return sent - sum(v.value for v in delivered)


class Rig:
    """One target's server and load generator, set up once and then measured in rounds.

    Every rig is set up before any is measured, and the rounds visit the rigs in turn, so a
    burst of someone else's work on the shared machine lands on all targets alike instead of
    on whichever happened to run during it; the bare-forwarder ratio is then fairer.
    """

    def __init__(self, procs: Processes, target: Target, opt: Options, profile: bool) -> None:
        self.procs, self.target, self.opt = procs, target, opt
        self.res = Throughput(target)
        self.sent = 0
        self.server = Server(procs, target, opt.profile if profile else None)
        print(f"\n== {target.label} ({target.wire()}); server pid {self.server.proc.pid}")
        if self.server.redis_fsync:
            print(f"   redis-server: {self.server.redis_fsync}")
        t0 = time.monotonic()
        self.delivered = [procs.ctx.RawValue(ctypes.c_int64, 0) for _ in range(opt.sub_procs)]
        self.workers: list[BaseProcess] = []
        self.subs: list[Ctrl] = []
        for i, n in enumerate(_split(opt.subscribers, opt.sub_procs)):
            spec = WorkerSpec(target.kind, self.server.port, target.block, n)
            proc, conn = procs.spawn(sub_worker, spec, self.delivered[i], False)
            self.workers.append(proc)
            self.subs.append(conn)
        handles: list[tuple[bytes, bytes]] = []
        for c in self.subs:
            _, got, errors = _expect(c, "ready")
            if errors:
                raise BenchError(f"{len(errors)} subscribers failed to set up: {errors[0]}")
            handles += got
        spec = WorkerSpec(target.kind, self.server.port, target.block, opt.senders)
        proc, self.sender = procs.spawn(send_worker, spec, handles, self.delivered, opt.inflight)
        self.workers.append(proc)
        _expect(self.sender, "ready")
        self.res.setup_s = time.monotonic() - t0
        print(
            f"   setup: {opt.subscribers} subscribers in {opt.sub_procs} processes, "
            f"{opt.senders} sender connections, {self.res.setup_s:.1f} s",
            flush=True,
        )

    def _count(self) -> int:
        return sum(v.value for v in self.delivered)

    def saturate(self, run: int) -> None:
        opt, res, server = self.opt, self.res, self.server
        self.sender.send(("saturate", opt.warmup + opt.window + 0.2))
        time.sleep(opt.warmup)
        relay_cpu, store_cpu = CpuMeter(server.pids), CpuMeter(server.store_pids)
        gen_cpu = CpuMeter([w.pid for w in self.workers if w.pid is not None])
        c0, w0 = self._count(), time.monotonic()
        time.sleep(opt.window)
        c1, w1 = self._count(), time.monotonic()
        rate = (c1 - c0) / (w1 - w0)
        res.runs.append(rate)
        res.relay_cpu.append(relay_cpu.read())
        res.store_cpu.append(store_cpu.read())
        res.gen_cpu.append(gen_cpu.read())
        _, self.sent, _, errors = _expect(self.sender, "done")
        res.errors.update(errors)
        res.undelivered += _drain(self.delivered, self.sent, 30)
        redis_part = f", redis-server CPU {res.store_cpu[-1]:.2f}" if server.store_pids else ""
        print(
            f"   {self.target.label}, saturation {run}/{opt.repeats}: {rate:,.0f} msg/s "
            f"delivered; server CPU {res.relay_cpu[-1]:.2f}{redis_part}; "
            f"load generator CPU {res.gen_cpu[-1]:.2f} (cores)",
            flush=True,
        )

    def latency(self, run: int) -> None:
        opt, res, server = self.opt, self.res, self.server
        warm = min(opt.warmup, 1.5)
        self.sender.send(("paced", opt.rate, warm, opt.latency_window))
        time.sleep(warm)
        cpu_at = CpuMeter(server.pids)
        time.sleep(opt.latency_window)
        res.cpu_at.append(cpu_at.read())
        _, self.sent, offered, errors = _expect(self.sender, "done")
        res.offered.append(offered)
        res.undelivered += _drain(self.delivered, self.sent, 30)
        samples: list[int] = []
        found: Counter[str] = Counter(errors)
        for c in self.subs:
            c.send(("samples",))
            _, got, errs = _expect(c, "samples")
            samples += got
            found.update(errs)
        samples.sort()
        res.samples += len(samples)
        res.p50s.append(percentile(samples, 50) / 1e6)
        res.p99s.append(percentile(samples, 99) / 1e6)
        res.errors = dict(found)
        print(
            f"   {self.target.label}, latency {run}/{opt.repeats} at {opt.rate:,.0f} msg/s "
            f"offered (achieved {offered:,.0f}): p50 {res.p50s[-1]:.2f} ms, "
            f"p99 {res.p99s[-1]:.2f} ms over {len(samples):,} messages; "
            f"server CPU {res.cpu_at[-1]:.2f}",
            flush=True,
        )

    def finish(self) -> Throughput:
        res, server = self.res, self.server
        res.peak_rss_mib = peak_rss_mib(server.proc.pid)
        res.rss_mib = rss_mib(server.proc.pid)
        if server.redis is not None:
            res.store_peak_rss_mib = peak_rss_mib(server.redis.pid)
        print(
            f"   {self.target.label}: median {res.median_rate:,.0f} msg/s, p50 "
            f"{res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms; "
            f"server peak RSS {res.peak_rss_mib:.0f} MiB"
            + (
                f" (redis-server peak RSS {res.store_peak_rss_mib:.0f} MiB)"
                if server.redis is not None
                else ""
            )
            + (f"; errors {res.errors}" if res.errors else "")
            + (f"; UNDELIVERED {res.undelivered}" if res.undelivered else "")
        )
        self.procs.stop_workers([*self.subs, self.sender], self.workers)
        server.stop()
        return res


def run_throughput(
    procs: Processes, plan: list[Target], opt: Options, probes: list[float]
) -> list[Throughput]:
    rigs: list[Rig] = []
    try:
        for target in plan:
            first_kith = target.kind == "kith" and all(r.target.kind != "kith" for r in rigs)
            rigs.append(Rig(procs, target, opt, profile=first_kith))
        for run in range(1, opt.repeats + 1):
            probe = cpu_probe()
            print(
                f"\nround {run}: load average {load_average()[0]:.2f}; "
                f"a spinning process got {probe:.2f} of a core",
                flush=True,
            )
            probes.append(probe)
            for rig in rigs:
                rig.saturate(run)
            for rig in rigs:
                rig.latency(run)
        print()
        return [rig.finish() for rig in rigs]
    finally:
        for rig in rigs:
            rig.server.stop()


def run_idle(procs: Processes, target: Target, opt: Options) -> Idle:
    res = Idle(target)
    server = Server(procs, target, None)
    print(f"\n== idle: {opt.idle:,} subscribed connections to the {target.label}")
    time.sleep(0.5)
    res.baseline_mib = rss_mib(server.proc.pid)
    t0 = time.monotonic()
    delivered = [procs.ctx.RawValue(ctypes.c_int64, 0) for _ in range(opt.idle_procs)]
    conns: list[Ctrl] = []
    workers: list[BaseProcess] = []
    try:
        for i, n in enumerate(_split(opt.idle, opt.idle_procs)):
            spec = WorkerSpec(target.kind, server.port, target.block, n, concurrency=40)
            proc, conn = procs.spawn(sub_worker, spec, delivered[i], True)
            workers.append(proc)
            conns.append(conn)
        errors: list[str] = []
        for c in conns:
            _, handles, errs = _expect(c, "ready", 600)
            res.connections += len(handles)
            errors += errs
        res.failed = len(errors)
        res.setup_s = time.monotonic() - t0
        time.sleep(2.0)  # let the relay settle (freed handshake buffers, finished tasks)
        res.rss_mib = rss_mib(server.proc.pid)
        res.peak_rss_mib = peak_rss_mib(server.proc.pid)
        if server.redis is not None:
            res.store_rss_mib = rss_mib(server.redis.pid)
    finally:
        procs.stop_workers(conns, workers)
        server.stop()
    print(
        f"   {res.connections:,} subscribed in {res.setup_s:.1f} s "
        f"({res.failed} failed{': ' + errors[0] if errors else ''}); server RSS "
        f"{res.rss_mib:.0f} MiB (empty: {res.baseline_mib:.0f} MiB), "
        f"peak {res.peak_rss_mib:.0f} MiB"
        + (f"; redis-server RSS {res.store_rss_mib:.0f} MiB" if server.redis is not None else "")
    )
    return res


def _summary(tp: list[Throughput], idle: list[Idle], opt: Options, probes: list[float]) -> None:
    bare = next((t for t in tp if t.target.kind == "bare"), None)
    print("\n" + "=" * 100)
    print(
        f"Summary ({opt.subscribers} subscriber connections, {opt.senders} sender connections, "
        f"median of {opt.repeats} windows of {opt.window:g} s; a spinning process got "
        f"{', '.join(f'{x:.2f}' for x in probes)} of a core before each round)"
    )
    head = (
        f"{'target':<34}{'msg/s':>9}{'x bare':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU sat':>9}{'CPU@rate':>9}{'us/msg':>8}{'peak MiB':>10}"
    )
    print(head)
    for t in tp:
        ratio = t.median_rate / bare.median_rate if bare and bare.median_rate else float("nan")
        print(
            f"{t.target.label:<34}{t.median_rate:>9,.0f}{ratio:>8.2f}{t.p50_ms:>8.2f}"
            f"{t.p99_ms:>8.2f}{median(t.relay_cpu):>9.2f}{t.cpu_at_rate:>9.2f}"
            f"{t.us_per_msg:>8.0f}"
            f"{t.peak_rss_mib:>10.0f}"
        )
    print(
        f"(medians over the rounds; p50/p99: send-to-push latency at {opt.rate:,.0f} msg/s "
        "offered; CPU: server "
        "user+sys in cores, at saturation and at that rate; us/msg: server CPU microseconds "
        "per message at that rate; peak: server VmHWM)"
    )
    for i in idle:
        print(
            f"idle {i.connections:,} subscribed connections, {i.target.label}: "
            f"RSS {i.rss_mib:.0f} MiB (empty {i.baseline_mib:.0f} MiB, "
            f"{(i.rss_mib - i.baseline_mib) * 1024 / max(i.connections, 1):.1f} KiB/connection)"
        )


def _options(argv: Sequence[str] | None) -> tuple[Options, Path | None]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--stores",
        default="sqlite",
        help="comma-separated kith stores: sqlite, memory, redis (default sqlite)",
    )
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=100, help="sender connections")
    ap.add_argument("--sub-procs", type=int, default=2)
    ap.add_argument("--idle", type=int, default=10_000, help="idle subscribed connections")
    ap.add_argument("--idle-procs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2000.0, help="offered load for latency")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--window", type=float, default=5.0, help="seconds per saturation window")
    ap.add_argument("--latency-window", type=float, default=5.0)
    ap.add_argument(
        "--inflight",
        type=int,
        default=0,
        help="max messages sent but not yet delivered (default 4 x subscribers)",
    )
    ap.add_argument("--block-size", type=int, default=p.DEFAULT_BLOCK_SIZE)
    ap.add_argument("--stage-ms", type=float, default=None,
                    help="SQLite relay's stage_ms (default: the relay's own default)")
    ap.add_argument(
        "--small-block",
        type=int,
        default=1024,
        help="second kith run at this block size (0 to skip)",
    )
    ap.add_argument("--bare-payload", type=int, default=1024)
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare forwarder")
    ap.add_argument(
        "--profile", type=Path, help="run the first kith relay under cProfile, writing stats here"
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--quick", action="store_true", help="small smoke run (about a minute)")
    a = ap.parse_args(argv)
    global STAGE_MS  # noqa: PLW0603 -- one setting for every SQLite server this run starts
    STAGE_MS = a.stage_ms
    if a.quick:
        a.subscribers, a.senders, a.idle = min(a.subscribers, 200), min(a.senders, 20), 2000
        a.repeats, a.warmup, a.window, a.latency_window = 3, 1.0, 2.0, 2.0
    stores = tuple(s.strip() for s in a.stores.split(",") if s.strip())
    bad = [s for s in stores if s not in ("sqlite", "memory", "redis")]
    if bad or a.subscribers < 1 or a.senders < 1 or a.sub_procs < 1 or a.idle_procs < 1:
        ap.error(f"bad arguments (unknown stores: {bad})")
    opt = Options(
        stores=stores, subscribers=a.subscribers, senders=a.senders, sub_procs=a.sub_procs,
        idle=a.idle, idle_procs=max(a.idle_procs, 2 if a.idle > 4000 else 1), rate=a.rate,
        repeats=max(a.repeats, 1), warmup=a.warmup, window=a.window,
        latency_window=a.latency_window, inflight=a.inflight or 4 * a.subscribers,
        block=a.block_size, small_block=a.small_block, bare_payload=a.bare_payload,
        profile=a.profile, skip_idle=a.skip_idle, bare=not a.no_bare,
    )  # fmt: skip
    return opt, a.json


def main(argv: Sequence[str] | None = None) -> int:
    opt, json_out = _options(argv)
    nofile = raise_nofile()
    m = machine()
    load = load_average()
    print(m.describe())
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"open-file limit {nofile}"
    )
    print(f"options: {', '.join(f'{k}={v}' for k, v in asdict(opt).items())}")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    plan = [Target("bare", "-", opt.bare_payload)] if opt.bare else []
    for store in opt.stores:
        plan.append(Target("kith", store, opt.block))
        if opt.small_block:
            plan.append(Target("kith", store, opt.small_block))
    tp: list[Throughput] = []
    probes: list[float] = []
    idle: list[Idle] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kith-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            tp = run_throughput(procs, plan, opt, probes)
            if not opt.skip_idle:
                for store in opt.stores:
                    idle.append(run_idle(procs, Target("kith", store, opt.block), opt))
                if opt.bare:
                    idle.append(run_idle(procs, Target("bare", "-", opt.bare_payload), opt))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping every process this benchmark started", flush=True)
            return 130
        except BenchError as exc:
            print(f"\nbenchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.close()
    _summary(tp, idle, opt, probes)
    load = load_average()
    print(
        f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"total {time.monotonic() - started:.0f} s"
    )
    if json_out is not None:
        data = {
            "machine": asdict(m),
            "options": {k: str(v) for k, v in asdict(opt).items()},
            "throughput": [asdict(t) | {"median": t.median_rate} for t in tp],
            "idle": [asdict(i) for i in idle],
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-server":
        bare_server(0)
    else:
        raise SystemExit(main())
