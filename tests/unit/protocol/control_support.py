"""Set-up for the receipt and queue-move tests: relays simulated as FIFO queues keyed by
(relay, sender id), and a way for a peer to send control messages it should not."""

from __future__ import annotations

from collections import defaultdict

from kith.protocol import pairwise as pw
from tests.unit.protocol.pairwise_support import NOW

RELAY_C = "ws://127.0.0.1:7003"
RELAY_D = "ws://127.0.0.1:7004"


class Relays:
    """What the relays hold: one FIFO per queue, deleted on delivery."""

    def __init__(self) -> None:
        self.queues: defaultdict[tuple[str, bytes], list[bytes]] = defaultdict(list)

    def send(self, out: pw.SendBlock) -> None:
        self.queues[(out.queue.relay, out.queue.sender_id)].append(out.block)

    def drain(self, inbox: pw.InboxQueue) -> list[bytes]:
        return self.queues.pop((inbox.relay, inbox.sender_id), [])

    def held(self, inbox: pw.InboxQueue) -> int:
        return len(self.queues.get((inbox.relay, inbox.sender_id), []))


def recv(channel: pw.Channel, block: bytes, r: pw.RandomBytes, now: int = NOW) -> pw.Event:
    return channel.receive(block, now_ms=now, rng=r)


def forged_control(sender: pw.Channel, msg_type: int, body: bytes, r: pw.RandomBytes) -> bytes:
    """A control message with any body, properly encrypted by ``sender``: what a buggy or
    captured peer could send (the channel's public methods never produce these)."""
    return sender._seal(int(msg_type), 0, body, NOW, r).block
