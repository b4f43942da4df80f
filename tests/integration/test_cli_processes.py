"""The ``kith`` command as people and scripts run it: separate processes, separate vaults, a
relay process, passphrases through ``--passphrase-fd`` pipes, 127.0.0.1 only.

- the whole flow, command by command;
- 1,000 messages each way between two ``kith chat --json`` processes while the relay is killed
  with SIGKILL and restarted on the same port; every message arrives once and in order; then
  the relay's files and both vaults are searched for the text: it is nowhere in the clear;
- a client killed with SIGKILL in the middle of a batch, then started again: the peer gets
  every message the client had accepted, once, in order;
- bad input and missing passphrases: one line, the documented exit code, never a traceback.

Vaults live on tmpfs (/dev/shm) when there is one. What these tests check (exactly-once,
order, nothing in the clear, survival of SIGKILL) does not depend on fsync, which survives a
killed process either way; on a shared disk the vaults' fsyncs would make the 2,000-message test
take minutes instead of seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kith.cli.codes import (
    EXIT_ERROR,
    EXIT_INVITATION,
    EXIT_OK,
    EXIT_PASSPHRASE,
    EXIT_UNREACHABLE,
)
from tests.support import RelayProcess

pytestmark = pytest.mark.integration

KITH = [sys.executable, "-m", "kith.cli.main"]
ALICE_PASS = b"alice's test passphrase"
BOB_PASS = b"bob's test passphrase"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KITH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def vaults(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="kith-cli-test-", dir=shm))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


@dataclass
class Profile:
    path: Path
    passphrase: bytes

    def run(
        self, *argv: str, stdin: bytes = b"", passphrase: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """One command; the passphrase arrives on a pipe as descriptor N (never argv/env)."""
        r, w = os.pipe()
        os.write(w, (self.passphrase if passphrase is None else passphrase) + b"\n")
        os.close(w)
        try:
            done = subprocess.run(
                [*KITH, "--profile", str(self.path), "--passphrase-fd", str(r),
                 "--timeout", "10", *argv],
                input=stdin, capture_output=True, timeout=timeout, env=_env(), pass_fds=(r,),
                start_new_session=True, check=False,
            )
        finally:
            os.close(r)
        out = subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def json(self, *argv: str) -> Any:
        out = self.run(*argv, "--json")
        assert out.returncode == EXIT_OK, out.stderr
        return json.loads(out.stdout)


def init(path: Path, relay_url: str, passphrase: bytes) -> Profile:
    p = Profile(path, passphrase)
    out = p.run("init", "--relay", relay_url, "--insecure-fast-kdf-for-tests")
    assert out.returncode == EXIT_OK, out.stderr
    return p


def pair(alice: Profile, bob: Profile) -> None:
    link = alice.json("invite")["link"]
    assert bob.json("accept", link, "--name", "alice")["contact"]["name"] == "alice"
    assert [c["name"] for c in alice.json("contacts")["contacts"]] == ["contact-1"]
    assert alice.run("rename", "contact-1", "bob").returncode == EXIT_OK


@dataclass
class Live:
    """A running ``kith chat --json`` or ``kith listen --json``: stdout parsed into events."""

    proc: subprocess.Popen[bytes]
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(cls, profile: Profile, *argv: str) -> Live:
        proc = subprocess.Popen(
            [*KITH, "--profile", str(profile.path), "--passphrase-fd", "0", "--timeout", "20",
             *argv, "--json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=_env(), start_new_session=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(profile.passphrase + b"\n")
        proc.stdin.flush()
        live = cls(proc)
        threading.Thread(target=live._read_out, daemon=True).start()
        threading.Thread(target=live._read_err, daemon=True).start()
        live.wait(lambda: any(e["event"] == "ready" for e in live.events), 30)
        return live

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self.changed:
                self.events.append(event)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def wait(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not done()):
                    raise AssertionError(
                        f"timed out (exit {self.proc.poll()}): {''.join(self.stderr)[-2000:]}"
                    )
                self.changed.wait(min(left, 0.5))

    def feed(self, lines: list[str]) -> threading.Thread:
        """Write lines to stdin on a thread (a full pipe must not block the test)."""

        def write() -> None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                for line in lines:
                    self.proc.stdin.write(json.dumps({"text": line}).encode() + b"\n")
                self.proc.stdin.flush()

        t = threading.Thread(target=write, daemon=True)
        t.start()
        return t

    def received(self) -> list[str]:
        with self.changed:
            return [e["message"]["text"] for e in self.events if e["event"] == "message"]

    def queued(self) -> list[str]:
        with self.changed:
            return [e["message"]["text"] for e in self.events if e["event"] == "queued"]

    def finish(self, timeout: float = 60) -> int:
        """End of stdin: chat sends what is left and exits."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def files_containing(roots: list[Path], needle: bytes) -> list[Path]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                hits.append(path)
    return hits


def file_count(roots: list[Path]) -> int:
    return sum(1 for r in roots for p in r.rglob("*") if p.is_file() and p.stat().st_size > 0)


# ----------------------------------------------------------------------------- the flow


def test_the_whole_flow_in_separate_processes(vaults: Path, tmp_path: Path) -> None:
    relay = RelayProcess("--store", "sqlite", "--db", str(tmp_path / "relay.db"))
    try:
        alice = init(vaults / "alice", relay.url, ALICE_PASS)
        bob = init(vaults / "bob", relay.url, BOB_PASS)
        pair(alice, bob)
        a_number = alice.json("verify", "bob", "--show")["safety_number"]
        b_number = bob.json("verify", "alice", "--show")["safety_number"]
        assert bob.run("verify", "alice", a_number).returncode == EXIT_OK
        assert alice.run("verify", "bob", *b_number.split()).returncode == EXIT_OK

        assert alice.run("send", "bob", "-", stdin=b"from alice, by stdin\n").returncode == 0
        assert alice.run("send", "bob", "from alice, second").returncode == EXIT_OK
        assert bob.run("send", "alice", "from bob").returncode == EXIT_OK

        got = bob.json("inbox")["messages"]
        assert [(m["contact"], m["text"]) for m in got] == [
            ("alice", "from alice, by stdin"), ("alice", "from alice, second"),
        ]
        got = alice.json("inbox")["messages"]
        assert [(m["contact"], m["text"]) for m in got] == [("bob", "from bob")]
        assert {c["verification"] for c in alice.json("contacts")["contacts"]} == {"verified"}
        assert {c["verification"] for c in bob.json("contacts")["contacts"]} == {"verified"}
    finally:
        relay.stop()


# ----------------------------------------------------------------------------- 1,000 each way


def test_a_thousand_messages_each_way_across_a_relay_kill(vaults: Path, tmp_path: Path) -> None:
    n = 1000
    token = secrets.token_hex(6)
    needle = f"kith-marker-{token}".encode()
    to_bob = [f"kith-marker-{token}-a-{i:04d}" for i in range(n)]
    to_alice = [f"kith-marker-{token}-b-{i:04d}" for i in range(n)]
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir()
    relay_args = ("--store", "sqlite", "--db", str(relay_dir / "relay.db"),
                  "--quota-messages", "5000")
    relay = RelayProcess(*relay_args)
    a = b = None
    try:
        alice = init(vaults / "alice", relay.url, ALICE_PASS)
        bob = init(vaults / "bob", relay.url, BOB_PASS)
        pair(alice, bob)

        a = Live.start(alice, "chat", "bob")
        b = Live.start(bob, "chat", "alice")
        started = time.monotonic()
        a.feed(to_bob)
        b.feed(to_alice)

        # Kill the relay with both directions in full flow, and restart it on the same port.
        b.wait(lambda: len(b.received()) >= n // 3, 120)
        relay.kill()
        at_kill = (len(b.received()), len(a.received()))
        time.sleep(0.5)
        relay = RelayProcess(*relay_args, port=relay.port)

        a.wait(lambda: len(a.received()) >= n, 180)
        b.wait(lambda: len(b.received()) >= n, 180)
        elapsed = time.monotonic() - started
        assert at_kill[0] < n and at_kill[1] < n, f"the kill came too late: {at_kill}"

        # Everything accepted, everything arrived, once each, in the order it was written.
        assert a.queued() == to_bob
        assert b.queued() == to_alice
        assert b.received() == to_bob
        assert a.received() == to_alice

        assert a.finish() == EXIT_OK, "".join(a.stderr)
        assert b.finish() == EXIT_OK, "".join(b.stderr)
        assert a.received() == to_alice and b.received() == to_bob  # nothing more came
        print(f"2 x {n} messages in {elapsed:.1f} s, relay killed at {at_kill}")
    finally:
        for live in (a, b):
            if live is not None:
                live.kill()
        relay.stop()

    # No plaintext on disk: the relay's files (database, WAL) and both vaults.
    roots = [relay_dir, alice.path, bob.path]
    assert file_count([relay_dir]) >= 1 and file_count([alice.path]) >= 3
    assert files_containing(roots, needle) == []
    # ...and the search would have found it: the transcript holds it, the vault decrypts it.
    control = tmp_path / "control"
    control.mkdir()
    (control / "transcript").write_text("\n".join(to_bob))
    assert files_containing([control], needle) == [control / "transcript"]
    out = alice.run("messages", "bob", "--limit", "3000", "--json", "--timeout", "2")
    assert out.returncode == EXIT_UNREACHABLE  # the relay is gone: what the vault holds
    history = json.loads(out.stdout)["messages"]
    assert [m["text"] for m in history if m["direction"] == "out"] == to_bob


# ----------------------------------------------------------------------------- kill a client


def test_a_client_killed_mid_batch_loses_and_repeats_nothing(
    vaults: Path, tmp_path: Path
) -> None:
    batch = [f"batch line {i:03d} {secrets.token_hex(4)}" for i in range(400)]
    relay = RelayProcess("--store", "sqlite", "--db", str(tmp_path / "relay.db"))
    a = listener = None
    try:
        alice = init(vaults / "alice", relay.url, ALICE_PASS)
        bob = init(vaults / "bob", relay.url, BOB_PASS)
        pair(alice, bob)
        listener = Live.start(bob, "listen")

        a = Live.start(alice, "chat", "bob")
        a.feed(batch)
        a.wait(lambda: len(a.queued()) >= 60, 60)
        a.kill()
        accepted = a.queued()  # every line chat said it had stored before it died
        assert 60 <= len(accepted) < len(batch), "the kill came too late"
        assert accepted == batch[: len(accepted)]

        # Started again with nothing more to say: it sends what the vault holds and exits.
        again = alice.run("chat", "bob", stdin=b"", timeout=60)
        assert again.returncode == EXIT_OK, again.stderr

        stored = [m["text"] for m in alice.json("messages", "bob", "--limit", "1000")["messages"]]
        assert stored == batch[: len(stored)] and len(stored) >= len(accepted)
        listener.wait(lambda: len(listener.received()) >= len(stored), 60)
        time.sleep(1.0)  # room for a duplicate to show up, if there were one
        assert listener.received() == stored
    finally:
        for live in (a, listener):
            if live is not None:
                live.kill()
        relay.stop()


# ----------------------------------------------------------------------------- a terminal

# Runs kith in a new session whose controlling terminal is the pty on fd 0, as a login shell
# would: getpass then reads from /dev/tty. (A helper process rather than preexec_fn: the test
# process has threads, and preexec_fn is unsafe with threads.)
_ON_A_TTY = (
    "import fcntl, os, sys, termios\n"
    "os.setsid()\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'kith.cli.main', *sys.argv[1:]])\n"
)


def on_a_terminal(argv: list[str], answers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Run kith on a pty; when the screen shows each prompt, type its answer."""
    import select

    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _ON_A_TTY, *argv], stdin=slave, stdout=slave, stderr=slave,
        env=_env(),
    )
    os.close(slave)
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                screen += chunk
            if pending and screen.endswith(pending[0][0]):
                os.write(master, pending.pop(0)[1] + b"\n")
            elif proc.poll() is not None and not ready:
                break
        return proc.wait(30), screen
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_passphrases_typed_on_a_terminal_are_not_echoed(vaults: Path) -> None:
    relay = RelayProcess("--store", "memory")
    try:
        profile = str(vaults / "typed")
        secret = b"typed on a terminal " + secrets.token_hex(4).encode()
        init = ["--profile", profile, "init", "--relay", relay.url,
                "--insecure-fast-kdf-for-tests"]

        code, screen = on_a_terminal(
            init, [(b"new passphrase: ", secret), (b"the same passphrase again: ", b"other")]
        )
        assert code == EXIT_ERROR
        assert b"the two passphrases differ; nothing was created" in screen
        assert not Path(profile).exists()

        code, screen = on_a_terminal(
            init, [(b"new passphrase: ", secret), (b"the same passphrase again: ", secret)]
        )
        assert code == EXIT_OK, screen
        assert b"profile created at" in screen
        assert secret not in screen

        code, screen = on_a_terminal(
            ["--profile", profile, "contacts"], [(b"passphrase: ", secret)]
        )
        assert code == EXIT_OK, screen
        assert b"no contacts yet" in screen
        assert secret not in screen

        code, screen = on_a_terminal(["--profile", profile, "contacts"], [(b"passphrase: ", b"no")])
        assert code == EXIT_PASSPHRASE
        assert screen.endswith(b"kith: error: wrong passphrase\r\n")
        assert b"Traceback" not in screen
    finally:
        relay.stop()


# ----------------------------------------------------------------------------- bad input


def test_errors_are_one_line_and_never_a_traceback(vaults: Path, tmp_path: Path) -> None:
    relay = RelayProcess("--store", "memory")
    try:
        alice = init(vaults / "alice", relay.url, ALICE_PASS)

        out = alice.run("contacts", passphrase=b"wrong")
        assert (out.returncode, out.stderr) == (EXIT_PASSPHRASE, "kith: error: wrong passphrase\n")

        out = alice.run("accept", "kith:invite/GARBAGE", "--name", "x")
        assert out.returncode == EXIT_INVITATION
        assert out.stderr == "kith: error: invitation link is not valid\n"

        # No terminal (its own session) and no --passphrase-fd: refused, even with a
        # passphrase in the environment (kith never reads one from there).
        env = dict(_env(), KITH_PASSPHRASE=ALICE_PASS.decode(), PASSPHRASE=ALICE_PASS.decode())
        done = subprocess.run(
            [*KITH, "--profile", str(alice.path), "contacts"], capture_output=True, text=True,
            env=env, stdin=subprocess.DEVNULL, start_new_session=True, timeout=60, check=False,
        )
        assert done.returncode == EXIT_ERROR
        assert done.stderr == (
            "kith: error: no terminal to ask for the passphrase on; give it with "
            "--passphrase-fd N\n"
        )

        done = subprocess.run(
            [*KITH, "--profile", str(alice.path), "--passphrase-fd", "9", "contacts"],
            capture_output=True, text=True, env=_env(), start_new_session=True, timeout=60,
            check=False,
        )
        assert done.returncode == EXIT_ERROR
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1

        # A listener holds the profile: a second command is turned away, not run alongside.
        listener = Live.start(alice, "listen")
        try:
            out = alice.run("contacts")
            assert out.returncode == EXIT_ERROR
            assert "in use by another kith command" in out.stderr
        finally:
            assert listener.stop() == EXIT_OK
            assert "Traceback" not in "".join(listener.stderr)
        assert alice.run("contacts").returncode == EXIT_OK
    finally:
        relay.stop()

