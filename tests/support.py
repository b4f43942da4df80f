"""Test support: real processes on 127.0.0.1 (a relay, a redis-server), started and stopped
by the tests themselves. Nothing here talks to any other address."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 with its files in ``directory``.

    ``stop()`` and ``start()`` may be called repeatedly; the port stays the same, so clients
    can reconnect as they would to a restarted production server.
    """

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory), "--save", "", "--protected-mode", "yes",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--logfile", str(self.directory / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def dump(self) -> Path:
        """Write an RDB snapshot (SAVE) and return its path."""
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "SAVE"],
            capture_output=True, check=True, timeout=30,
        )
        assert b"OK" in out.stdout, out
        return self.directory / "dump.rdb"


_READY = re.compile(rb"kith relay ready on 127\.0\.0\.1:(\d+)")


class RelayProcess:
    """``kith relay serve`` in its own process, bound to 127.0.0.1 on a port it picks (or on
    ``port``, to restart a relay where its clients expect it)."""

    def __init__(self, *args: str, port: int = 0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kith.cli.main", "relay", "serve", "--host", "127.0.0.1",
             "--port", str(port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        self.port = self._await_ready(30)
        self.url = f"ws://127.0.0.1:{self.port}"

    def _await_ready(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                m = _READY.search(buf)
                if m:
                    return int(m.group(1))
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else b""
        self.kill()
        raise RuntimeError(f"relay did not start: {buf!r} {err!r}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")
