"""Fixtures for the ``kith`` command tests: ``main()`` called in this process, against a real
relay on 127.0.0.1 running on its own thread (``main()`` runs its own event loop, so the relay
cannot share one with it).

Profiles use ``--insecure-fast-kdf-for-tests`` and passphrases passed through a pipe with
``--passphrase-fd``, exactly as scripts do.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kith.cli.main import main
from kith.client.service import ClientOptions
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.sqlite import SQLiteStore

TIMEOUT = "10"


class ThreadRelay:
    """A relay with a SQLite store on its own event loop thread; stop/start keep the port."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self.server: RelayServer | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        async def start() -> None:
            self.server = RelayServer(SQLiteStore(self.db), ServerConfig(port=self.port))
            await self.server.start()
            self.port = self.server.port

        self._run(start())

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.stop())
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        import json

        lines = [line for line in self.out.splitlines() if line.strip()]
        assert len(lines) == 1, self.out
        return json.loads(lines[0])


class Kith:
    """Runs ``main()`` like a shell would, capturing stdout and stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(
        self, *argv: str, passphrase: str | None = None, stdin: str | None = None
    ) -> Result:
        args = list(argv)
        fds: list[int] = []
        if passphrase is not None:
            r, w = os.pipe()
            os.write(w, passphrase.encode() + b"\n")
            os.close(w)
            fds.append(r)
            args[:0] = ["--passphrase-fd", str(r)]
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin or ""))
        self.capsys.readouterr()
        try:
            code = main(args)
        finally:
            for fd in fds:
                os.close(fd)
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        return Result(code, out, err)


@dataclass
class Profile:
    """One profile and its passphrase; calling it runs a kith command as this profile."""

    kith: Kith
    path: Path
    passphrase: str

    def __call__(
        self, *argv: str, stdin: str | None = None, passphrase: str | None = None
    ) -> Result:
        return self.kith(
            "--profile", str(self.path), "--timeout", TIMEOUT, *argv,
            passphrase=self.passphrase if passphrase is None else passphrase, stdin=stdin,
        )


def make_profile(kith: Kith, path: Path, relay_url: str, passphrase: str) -> Profile:
    res = kith("--profile", str(path), "init", "--relay", relay_url,
               "--insecure-fast-kdf-for-tests", passphrase=passphrase)
    assert res.code == 0, res.err
    return Profile(kith, path, passphrase)


def pair(alice: Profile, bob: Profile) -> None:
    """alice invites, bob accepts (as 'alice'), alice names the new contact 'bob'."""
    link = alice("invite", "--json").json()["link"]
    res = bob("accept", link, "--name", "alice")
    assert res.code == 0, res.err
    res = alice("contacts", "--json")
    assert res.code == 0, res.err
    assert [c["name"] for c in res.json()["contacts"]] == ["contact-1"]
    assert alice("rename", "contact-1", "bob").code == 0


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadRelay]:
    r = ThreadRelay(tmp_path_factory.mktemp("relay") / "relay.db")
    r.start()
    yield r
    r.close()


@pytest.fixture
def kith(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Kith:
    monkeypatch.delenv("KITH_DEBUG", raising=False)
    # Shorter waits than a person over Tor needs: sync takes the relay to be drained after
    # this long without a message (127.0.0.1 answers in milliseconds).
    monkeypatch.setattr(
        "kith.cli.profile.client_options",
        lambda connect_timeout: ClientOptions(connect_timeout=connect_timeout, settle=0.3),
    )
    return Kith(capsys, monkeypatch)


@pytest.fixture
def alice(kith: Kith, relay: ThreadRelay, tmp_path: Path) -> Profile:
    return make_profile(kith, tmp_path / "alice", relay.url, "alice's test passphrase")


@pytest.fixture
def bob(kith: Kith, relay: ThreadRelay, tmp_path: Path) -> Profile:
    return make_profile(kith, tmp_path / "bob", relay.url, "bob's test passphrase")
