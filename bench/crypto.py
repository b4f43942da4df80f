"""Pairwise crypto benchmark: kith's channel against raw vodozemac doing the same work.

Run:  .venv/bin/python bench/crypto.py [--setups 200] [--messages 2000] [--repeats 5] [--body 100]

Why: every kith message pays for more than Olm: an inner header, padding to fill the relay
block (about 3.9 KB encrypted instead of the body), a zero-tail check, canonical-encoding
checks, a replay window, and decryption on a copy of the session so that a refused message
changes nothing. This script shows what that costs, in the same process and run:

- session setups/s: kith's whole handshake (create_invitation, accept_invitation, the
  inviter's receive, the acceptor's receive of the confirmation: two new accounts, one signed
  one-time key verified, two blocks) against raw vodozemac (two accounts, a one-time key, an
  outbound and an inbound session, one message each way);
- alternating messages/s (each message answered, so every message turns the ratchet: the
  usual shape of a conversation) and one-way messages/s (a burst in one direction: one
  chain step each), encrypt + decrypt, ``--body`` bytes of text per message;
- raw vodozemac on the same body, and on a plaintext as large as kith's padded one, so the
  padding's share and the rest of kith's share can be told apart.

It prints the median of ``--repeats`` runs and the ratios kith / raw (target: alternating at
least 0.5 of raw). Figures only; nothing is asserted. Nothing touches the network or disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version

import vodozemac as vz

from kith.crypto.olm import CRYPTO
from kith.protocol import envelope as ev
from kith.protocol import pairwise as pw

NOW = 1_760_000_000_000


def _inbox(relay: str) -> pw.InboxQueue:
    return pw.InboxQueue(relay, os.urandom(16), os.urandom(16), 4096, os.urandom(32))


def kith_setup() -> tuple[pw.Channel, pw.Channel]:
    pending = pw.create_invitation(
        inbox=_inbox("ws://127.0.0.1:1"), now_ms=NOW, rng=os.urandom, crypto=CRYPTO
    )
    bob, accept = pw.accept_invitation(
        pending.invitation,
        inbox=_inbox("ws://127.0.0.1:2"),
        now_ms=NOW,
        rng=os.urandom,
        crypto=CRYPTO,
    )
    alice, effects = pending.receive(accept.block, now_ms=NOW, rng=os.urandom)
    confirm = effects[1]
    assert isinstance(confirm, pw.SendBlock)
    bob.receive(confirm.block)
    return alice, bob


def raw_setup() -> tuple[vz.Session, vz.Session]:
    alice, bob = vz.Account(), vz.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    bob.mark_keys_as_published()
    out = alice.create_outbound_session(bob.curve25519_key, otk)
    prekey = out.encrypt(b"hello").to_pre_key()
    assert prekey is not None
    inbound, _ = bob.create_inbound_session(alice.curve25519_key, prekey)
    out.decrypt(inbound.encrypt(b"hello back"))
    return out, inbound


def _rate(n: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        work()
    return n / (time.perf_counter() - start)


def _median(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def kith_messages(n: int, body: bytes, alternating: bool) -> float:
    alice, bob = kith_setup()
    start = time.perf_counter()
    for i in range(n):
        sender, receiver = (alice, bob) if not alternating or i % 2 == 0 else (bob, alice)
        receiver.receive(sender.send(body, now_ms=NOW, rng=os.urandom).block)
    return n / (time.perf_counter() - start)


def raw_messages(n: int, body: bytes, alternating: bool) -> float:
    alice, bob = raw_setup()
    start = time.perf_counter()
    for i in range(n):
        sender, receiver = (alice, bob) if not alternating or i % 2 == 0 else (bob, alice)
        receiver.decrypt(sender.encrypt(body))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--body", type=int, default=100, help="text bytes per message")
    args = parser.parse_args()
    body = b"m" * args.body
    padded = bytes(ev.plaintext_capacity(4096))

    print(
        f"python {platform.python_version()}, vodozemac {version('vodozemac')},"
        f" {os.cpu_count()} CPUs, block 4096 B, body {args.body} B,"
        f" kith plaintext {len(padded)} B, median of {args.repeats} runs"
    )
    print()
    rows: list[tuple[str, float, float, float | None]] = []

    kith = _median(args.repeats, lambda: _rate(args.setups, kith_setup))
    raw = _median(args.repeats, lambda: _rate(args.setups, raw_setup))
    rows.append(("session setups/s", kith, raw, None))
    for name, alternating in (("alternating msgs/s", True), ("one-way msgs/s", False)):
        k = _median(args.repeats, partial(kith_messages, args.messages, body, alternating))
        r = _median(args.repeats, partial(raw_messages, args.messages, body, alternating))
        rp = _median(args.repeats, partial(raw_messages, args.messages, padded, alternating))
        rows.append((name, k, r, rp))

    print(f"{'':22}{'kith':>10}{'raw':>10}{'ratio':>8}{'raw padded':>12}{'ratio':>8}")
    for name, k, r, padded_rate in rows:
        line = f"{name:22}{k:10.0f}{r:10.0f}{k / r:8.2f}"
        if padded_rate is not None:
            line += f"{padded_rate:12.0f}{k / padded_rate:8.2f}"
        print(line)
    print()
    print("ratio: kith / raw vodozemac on the same body; raw padded: raw on kith's padded size.")
    print("target: alternating ratio >= 0.50")


if __name__ == "__main__":
    main()
