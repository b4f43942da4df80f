"""Shared pieces of kith's benchmarks: machine facts, /proc readings, process hygiene, and a
lean WebSocket client for load generation.

Why a hand-written client: on a 2-core machine the load generator competes with the server it
measures. The ``websockets`` asyncio client spends a task, a future and several method calls
per message; driving 1,000 connections with it would cost as much CPU as the relay itself and
the figures would measure the generator. :class:`WsClient` is an ``asyncio.Protocol`` that
parses server frames straight out of its buffer, answers pings, and writes every frame a
callback queued in one ``write`` per read. It speaks just enough RFC 6455 for a benchmark
(binary messages, no fragmentation, no extensions) and fails loudly on anything else, so it
can never skew a figure silently. Client frames are masked as the RFC requires.

Everything here talks only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from websockets.utils import accept_key

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover -- the pinned wheel ships the C speedups
    from websockets.utils import apply_mask

LOCALHOST: Final = "127.0.0.1"


class BenchError(Exception):
    """The benchmark could not run as designed (a process did not start, a peer misbehaved)."""


# --------------------------------------------------------------------------- the machine


@dataclass(frozen=True, slots=True)
class Machine:
    nproc: int
    cpu_model: str
    python: str
    kernel: str

    def describe(self) -> str:
        return (
            f"machine: {self.nproc} CPU(s), {self.cpu_model}; Python {self.python}; "
            f"Linux {self.kernel}"
        )


def machine() -> Machine:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return Machine(os.cpu_count() or 0, model, platform.python_version(), platform.release())


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages: how busy the shared machine was."""
    return os.getloadavg()


def cpu_probe(seconds: float = 0.5) -> float:
    """How much of one core a spinning process gets right now (1.0 on an idle machine).

    The load average counts runnable tasks; this measures what a benchmark process actually
    receives on a machine shared with other work, so a figure can be read against it.
    """
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - wall0 < seconds:
        pass
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


def raise_nofile() -> int:
    """Raise the open-file soft limit to the hard limit (10,000 sockets need it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --------------------------------------------------------------------------- /proc

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + sys CPU seconds of ``pid`` so far (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the largest resident set the process has had since it started."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int) -> float:
    """VmRSS: the resident set now."""
    return _status_kib(pid, "VmRSS") / 1024


class CpuMeter:
    """CPU seconds per wall second of a set of processes over an interval."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._t0 = time.monotonic()
        self._c0 = self._total()

    def _total(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def read(self) -> float:
        elapsed = time.monotonic() - self._t0
        return (self._total() - self._c0) / elapsed if elapsed > 0 else 0.0


# --------------------------------------------------------------------------- statistics


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (NaN when empty)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listening on {LOCALHOST}:{port} after {timeout:.0f} s")


def read_ready_line(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read ``proc``'s stdout until a line containing ``marker``; return that line."""
    import select

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.splitlines():
                if marker in line:
                    return line
        elif proc.poll() is not None:
            break
    err = b""
    if proc.poll() is not None and proc.stderr is not None:
        err = proc.stderr.read()[-2000:]
    raise BenchError(f"process did not report ready: {buf[-500:]!r} {err!r}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: a process we started never outlives the benchmark."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------- the client

_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
_MAX_HANDSHAKE: Final = 16384


def _frame(opcode: int, payload: bytes) -> bytes:
    """One masked, unfragmented client frame."""
    n = len(payload)
    mask = random.getrandbits(32).to_bytes(4, "big")
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


OnMessage = Callable[[bytes], None]


class WsClient(asyncio.Protocol):
    """One client WebSocket to 127.0.0.1 (see the module docstring for what it speaks).

    ``on_message`` is called with each binary message; it may :meth:`queue` frames to send,
    and everything queued during one read goes out in a single ``write``.
    """

    def __init__(self, port: int, on_message: OnMessage) -> None:
        self.port = port
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._buf = bytearray()
        self._open = False
        self._out: list[bytes] = []

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = (
            f"GET / HTTP/1.1\r\nHost: {LOCALHOST}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode("ascii"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HANDSHAKE:
                    self._fail("handshake response too long")
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
            }
            if not head[0].startswith("HTTP/1.1 101") or headers.get(
                "sec-websocket-accept"
            ) != accept_key(self._key):
                self._fail(f"handshake refused: {head[0]!r}")
                return
            self._open = True
            self.opened.set_result(None)
        self._parse()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if not self.opened.done():
            self.opened.set_exception(BenchError("connection lost during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------------ sending

    def queue(self, payload: bytes) -> None:
        """Queue one binary message; it is written at the next :meth:`flush`."""
        self._out.append(_frame(_OP_BINARY, payload))

    def flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def send(self, payload: bytes) -> None:
        self.queue(payload)
        self.flush()

    def write_buffer(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buf = self._buf
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                self._fail("server frame is masked")
                return
            if end - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if not b0 & 0x80:
                self._fail("fragmented message (not spoken by this client)")
                return
            opcode = b0 & 0x0F
            if opcode == _OP_BINARY:
                self.on_message(payload)
            elif opcode == _OP_PING:
                self._out.append(_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                self._out.append(_frame(_OP_CLOSE, payload[:2]))
                self.flush()
                if self.transport is not None:
                    self.transport.close()
                return
            elif opcode in (_OP_PONG, _OP_TEXT):
                continue
            else:
                self._fail(f"unexpected opcode {opcode}")
                return
        del buf[:pos]

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError(why))
        self.abort()


async def ws_connect(port: int, on_message: OnMessage, timeout: float = 30.0) -> WsClient:
    """Open a :class:`WsClient` to 127.0.0.1:``port`` and complete the handshake."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(lambda: WsClient(port, on_message), LOCALHOST, port)
        await proto.opened
    return proto
