"""Shared set-up for the pairwise tests: deterministic randomness, queues, a finished handshake,
and a state fingerprint that lets a test assert "nothing changed"."""

from __future__ import annotations

import random
from dataclasses import dataclass

from kith.crypto.olm import CRYPTO
from kith.protocol import pairwise as pw
from kith.protocol.invitation import Invitation

NOW = 1_760_000_000_000  # ms
PICKLE_KEY = bytes(range(32))
RELAY_A = "ws://127.0.0.1:7001"
RELAY_B = "ws://127.0.0.1:7002"


def rng(seed: int = 0) -> pw.RandomBytes:
    """Reproducible randomness for everything kith draws itself (Olm draws its own)."""
    return random.Random(seed).randbytes


def make_inbox(r: pw.RandomBytes, relay: str = RELAY_A, block_size: int = 4096) -> pw.InboxQueue:
    return pw.InboxQueue(relay, r(16), r(16), block_size, r(32))


@dataclass
class Pair:
    pending: pw.PendingInvitation
    invitation: Invitation
    alice: pw.Channel  # the inviter
    bob: pw.Channel  # the acceptor
    accept_block: bytes
    inviter_effects: tuple[pw.Effect, ...]
    confirmed: pw.Confirmed


def handshake(seed: int = 0, block_a: int = 4096, block_b: int = 4096, now: int = NOW) -> Pair:
    r = rng(seed)
    pending = pw.create_invitation(
        inbox=make_inbox(r, RELAY_A, block_a), now_ms=now, rng=r, crypto=CRYPTO
    )
    invitation = Invitation.from_uri(pending.invitation.to_uri())
    bob, accept = pw.accept_invitation(
        invitation, inbox=make_inbox(r, RELAY_B, block_b), now_ms=now + 1, rng=r, crypto=CRYPTO
    )
    alice, effects = pending.receive(accept.block, now_ms=now + 2, rng=r)
    confirm = effects[1]
    assert isinstance(confirm, pw.SendBlock)
    event = bob.receive(confirm.block)
    assert isinstance(event, pw.Confirmed)
    return Pair(pending, invitation, alice, bob, accept.block, effects, event)


def fingerprint(channel: pw.Channel) -> bytes:
    """The channel's complete state, deterministically (vodozemac pickles are deterministic;
    only the outer seal is randomised, so open it)."""
    return CRYPTO.open(PICKLE_KEY, pw._CHANNEL_LABEL, channel.to_bytes(PICKLE_KEY))


def text(sender: pw.Channel, body: bytes, r: pw.RandomBytes, now: int = NOW) -> bytes:
    return sender.send(body, now_ms=now, rng=r).block


def body_of(event: pw.Event) -> bytes:
    assert isinstance(event, pw.Received), event
    return event.body
