"""``kith demo``: the quick start's main job, printed step by step.

In a temporary directory: a relay on 127.0.0.1 with the embedded SQLite store, and two
profiles, alice and bob, each a real vault driven by the real client service. Alice invites
bob, bob accepts, both compare safety numbers and verify each other, they exchange messages
both ways, a delivery receipt comes back, and at the end the relay's files and both vaults are
searched for the text that was sent: it must be nowhere on disk in the clear.

The two profiles use the test-only Argon2id cost so the demo runs in seconds; real profiles
(``kith init``) calibrate a cost of about a second per unlock. Everything is deleted at the end.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from kith.client.events import (
    ContactAdded,
    ContactConfirmed,
    Event,
    MessageReceived,
    MessageStateChanged,
)
from kith.client.model import MessageState
from kith.client.service import ClientService, EventStream
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.base import Store
from kith.vault.params import INSECURE_FAST_PARAMS_FOR_TESTS_ONLY

TOTAL: Final = 9
WAIT: Final = 15.0
E = TypeVar("E", bound=Event)


def _say(step: int, text: str, command: str = "") -> None:
    hint = f"   ({command})" if command else ""
    print(f"[{step}/{TOTAL}] {text}{hint}", flush=True)


def _detail(text: str) -> None:
    print(f"      {text}", flush=True)


async def _next(
    stream: EventStream, kind: type[E], match: Callable[[E], bool] = lambda e: True
) -> E:
    """The next event of ``kind`` (that ``match`` accepts), within WAIT seconds."""
    async with asyncio.timeout(WAIT):
        async for event in stream:
            if isinstance(event, kind) and match(event):
                return event
    raise RuntimeError("the service stopped before the expected event")


def files_containing(roots: list[Path], texts: list[str]) -> list[str]:
    """Every file under ``roots`` whose bytes contain one of ``texts`` (UTF-8)."""
    needles = [t.encode() for t in texts]
    found = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path))
    return found


async def _profile(path: Path, url: str) -> ClientService:
    # A random passphrase nobody sees: these profiles live for the length of the demo.
    return await ClientService.create(
        path,
        secrets.token_urlsafe(16),
        params=INSECURE_FAST_PARAMS_FOR_TESTS_ONLY,
        relay_url=url,
        allow_insecure_params_for_tests=True,
    )


async def run_demo(store: str = "sqlite") -> int:
    with tempfile.TemporaryDirectory(prefix="kith-demo-") as tmp:
        root = Path(tmp)
        relay_dir = root / "relay"
        relay_dir.mkdir(mode=0o700)
        backend: Store
        if store == "memory":
            from kith.relay.store.memory import MemoryStore

            backend = MemoryStore()
            where = "in-memory store"
        else:
            from kith.relay.store.sqlite import SQLiteStore

            backend = SQLiteStore(relay_dir / "relay.db")
            where = f"SQLite store {relay_dir / 'relay.db'}"
        relay = RelayServer(backend, ServerConfig(host="127.0.0.1", port=0))
        await relay.start()
        try:
            url = f"ws://127.0.0.1:{relay.port}"
            _say(1, f"relay listening on {url} ({where})", "kith relay serve")
            ok = await _conversation(root, url)
            leftover = (await backend.stats()).get("messages", 0)
        finally:
            await relay.stop()
        texts = list(_TEXTS.values())
        roots = [root / "alice", root / "bob"] + ([relay_dir] if store == "sqlite" else [])
        found = files_containing(roots, texts)
        _say(9, f"the relay holds {leftover} padded ciphertext(s) awaiting delivery; files "
             "containing any sent text "
             f"(relay and both vaults, {sum(1 for r in roots for p in r.rglob('*') if p.is_file())}"
             f" files searched): {found or 'none'}")
    if found or not ok:
        print("demo FAILED", flush=True)
        return 1
    print("demo done: everything above ran on 127.0.0.1 and has been deleted", flush=True)
    return 0


_TEXTS: Final = {
    "bob": "hi alice, it is bob. same place as last time?",
    "alice": "not there, it is watched now. I will send you a new place.",
}


async def _conversation(root: Path, url: str) -> bool:
    started = time.perf_counter()
    alice = await _profile(root / "alice", url)
    bob = await _profile(root / "bob", url)
    async with alice, bob:
        _say(2, f"two profiles created in {time.perf_counter() - started:.1f} s: "
             f"{root / 'alice'} and {root / 'bob'}", "kith init")
        _detail("DEMO ONLY: both use the test-only Argon2id cost; real profiles calibrate "
                "about 1 s per unlock")
        a_events, b_events = alice.events(), bob.events()
        await alice.start()
        await bob.start()

        invitation = await alice.create_invitation(ttl=600)
        _say(3, f"alice made a one-time invitation: {invitation.uri[:40]}... "
             f"({len(invitation.uri)} characters; also shown as a QR code)", "kith invite --qr")

        await bob.accept_invitation(invitation.uri, "alice")
        added = await _next(a_events, ContactAdded)
        await _next(b_events, ContactConfirmed)
        bob_at_alice = await alice.rename(added.contact, "bob")
        _say(4, "bob accepted it; alice's side confirmed; each named the other "
             "(each side has its own keys for this one relationship)",
             "kith accept LINK --name alice; kith rename contact-1 bob")

        a_number = await alice.safety_number(bob_at_alice)
        b_number = await bob.safety_number("alice")
        _say(5, "safety numbers, as each screen shows them:", "kith verify CONTACT")
        for who, number in (("alice", a_number), ("bob", b_number)):
            for i, line in enumerate(number.display().splitlines()):
                _detail(f"{who + ':' if i == 0 else '':7}{line}")
        await alice.verify(bob_at_alice, b_number.display())
        await bob.verify("alice", a_number.display())
        _detail("they match: each typed the other's digits and both contacts are verified")

        t0 = time.perf_counter()
        await bob.send("alice", _TEXTS["bob"])
        got = await _next(a_events, MessageReceived)
        _say(6, f"bob -> alice, {1000 * (time.perf_counter() - t0):.0f} ms: {got.message.text!r}",
             "kith send alice")

        t0 = time.perf_counter()
        sent = await alice.send(bob_at_alice, _TEXTS["alice"])
        got = await _next(b_events, MessageReceived)
        _say(7, f"alice -> bob, {1000 * (time.perf_counter() - t0):.0f} ms: {got.message.text!r}",
             "kith chat bob")

        await _next(
            a_events,
            MessageStateChanged,
            lambda e: e.message_id == sent.id and e.state is MessageState.DELIVERED,
        )
        _say(8, "a delivery receipt came back: bob's device stored alice's message",
             "kith messages bob")
        held = len(await alice.messages(bob_at_alice)) + len(await bob.messages("alice"))
        _detail(f"the vaults hold {held} messages, readable only with each passphrase")
        return held == 4
