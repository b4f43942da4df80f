"""End-to-end benchmark: two kith clients talking through a local relay, against the raw relay
path in the same run, on 127.0.0.1 only.

Why: the client service wraps every message in work the relay path does not do: Olm
encryption and padding, a vault transaction (SQLCipher, fsync) before anything leaves the
device, another on arrival, a delivery receipt going back the same way. This measures what
that costs a person, as a ratio to the bare transport under the same relay, so that a change to
either side shows up as a change in the ratio rather than a number without a baseline.

What runs:

- one relay process (``kith relay serve``, SQLite store in a temporary directory);
- in this process, on one event loop: two :class:`~kith.client.service.ClientService`
  profiles in long-running mode, paired by a real invitation; and two bare
  :class:`~kith.client.relay.RelayClient` connections (a queue created, secured with the
  sender's key and subscribed; the sender proves its key), which is the raw path: no crypto,
  no vault.

Figures, each the median of ``--repeats`` rounds (the two paths alternate within a round):

- messages/s: ``--messages`` sent back to back, from the first send until the last one is
  received (end to end: stored in the recipient's vault; raw: pushed to the subscriber and
  acknowledged);
- p50/p99 latency: ``--latency`` messages one at a time, from the send call to the arrival.

Both clients share one interpreter here, as both raw connections do, so the two paths are
measured under the same handicap; two devices would each have their own CPU. The vaults are in
a temporary directory on the disk by default (their fsyncs are part of the cost a person pays);
``--vault-dir /dev/shm`` shows the figure without them. The profiles use the test-only Argon2id
cost, which changes how long unlocking takes and nothing measured here.

Run: ``.venv/bin/python bench/e2e.py`` (about a minute), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import (
    LOCALHOST,
    BenchError,
    cpu_probe,
    load_average,
    machine,
    median,
    percentile,
    read_ready_line,
    stop_process,
)

from kith.client.events import ContactAdded, MessageReceived, MessageStateChanged
from kith.client.model import MessageState
from kith.client.relay import RelayClient
from kith.client.service import ClientService, EventStream
from kith.crypto.signing import SigningKey
from kith.vault.params import INSECURE_FAST_PARAMS_FOR_TESTS_ONLY

TEXT_BYTES = 100


@dataclass(frozen=True, slots=True)
class Round:
    e2e_rate: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    raw_rate: float
    raw_p50_ms: float
    raw_p99_ms: float


def _text(i: int) -> str:
    head = f"bench message {i:06d} "
    return head + "x" * (TEXT_BYTES - len(head))


def _latencies(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(int(s * 1_000_000) for s in samples)  # microseconds
    return percentile(ordered, 50) / 1000, percentile(ordered, 99) / 1000


# ----------------------------------------------------------------------------- the relay


def start_relay(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kith.cli.main", "relay", "serve", "--host", LOCALHOST,
         "--port", "0", "--store", "sqlite", "--db", str(directory / "relay.db"),
         "--quota-messages", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    line = read_ready_line(proc, b"kith relay ready on", 30)
    port = int(line.rsplit(b":", 1)[1])
    return proc, f"ws://{LOCALHOST}:{port}"


# ----------------------------------------------------------------------------- end to end


class Pair:
    """Two paired profiles in long-running mode, and their event streams."""

    def __init__(self, a: ClientService, b: ClientService, a_events: EventStream,
                 b_events: EventStream, contact: str) -> None:
        self.a, self.b = a, b
        self.a_events, self.b_events = a_events, b_events
        self.contact = contact  # a's name for b

    @classmethod
    async def create(cls, root: Path, url: str) -> Pair:
        async def profile(name: str) -> ClientService:
            return await ClientService.create(
                root / name, os.urandom(16).hex(), params=INSECURE_FAST_PARAMS_FOR_TESTS_ONLY,
                relay_url=url, allow_insecure_params_for_tests=True,
            )

        a, b = await profile("a"), await profile("b")
        a_events, b_events = a.events(), b.events()
        await a.start()
        await b.start()
        invitation = await a.create_invitation()
        await b.accept_invitation(invitation.uri, "a")
        async with asyncio.timeout(30):
            async for event in a_events:
                if isinstance(event, ContactAdded):
                    return cls(a, b, a_events, b_events, event.contact.name)
        raise BenchError("the invitation was never answered")

    async def received(self, count: int) -> None:
        """Wait for ``count`` messages to be stored on b's side."""
        got = 0
        async with asyncio.timeout(300):
            while got < count:
                if isinstance(await self.b_events.__anext__(), MessageReceived):
                    got += 1

    async def drain(self, count: int) -> None:
        """Wait until a has ``count`` delivery receipts, so rounds do not overlap."""
        got = 0
        async with asyncio.timeout(300):
            while got < count:
                event = await self.a_events.__anext__()
                if isinstance(event, MessageStateChanged) and event.state is MessageState.DELIVERED:
                    got += 1

    async def rate(self, n: int) -> float:
        start = time.perf_counter()
        receiving = asyncio.ensure_future(self.received(n))
        for i in range(n):
            await self.a.send(self.contact, _text(i))
        await receiving
        elapsed = time.perf_counter() - start
        await self.drain(n)
        return n / elapsed

    async def latency(self, n: int) -> list[float]:
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await self.a.send(self.contact, _text(i))
            await self.received(1)
            samples.append(time.perf_counter() - start)
        await self.drain(n)
        return samples

    async def close(self) -> None:
        await self.a.lock()
        await self.b.lock()


# ----------------------------------------------------------------------------- raw relay path


class Raw:
    """A secured, subscribed queue and its sender: the relay path with nothing on top."""

    def __init__(self, sender: RelayClient, recipient: RelayClient, sid: bytes, rid: bytes):
        self.sender, self.recipient, self.sid, self.rid = sender, recipient, sid, rid
        self.body = os.urandom(sender.block_size)

    @classmethod
    async def create(cls, url: str) -> Raw:
        recipient_key, sender_key = SigningKey.generate(), SigningKey.generate()
        recipient = await RelayClient.connect(url)
        sender = await RelayClient.connect(url)
        rid, sid = await recipient.create_queue(recipient_key)
        await recipient.secure(rid, recipient_key, sender_key.public_key)
        await recipient.subscribe(rid, recipient_key)
        await sender.sender_auth(sid, sender_key)
        return cls(sender, recipient, sid, rid)

    async def received(self, count: int) -> None:
        for _ in range(count):
            msg = await self.recipient.next_message(timeout=60)
            await self.recipient.ack(self.rid, msg.msg_id)

    async def rate(self, n: int) -> float:
        start = time.perf_counter()
        receiving = asyncio.ensure_future(self.received(n))
        for _ in range(n):
            await self.sender.send(self.sid, self.body)
        await receiving
        return n / (time.perf_counter() - start)

    async def latency(self, n: int) -> list[float]:
        """From the send call to the arrival, as for the end-to-end path. The sender's OK is
        awaited after the arrival: with staging, a relay may answer it only once the
        recipient has acknowledged the message (or after ``stage_ms``)."""
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            sending = asyncio.ensure_future(self.sender.send(self.sid, self.body))
            msg = await self.recipient.next_message(timeout=60)
            samples.append(time.perf_counter() - start)
            await self.recipient.ack(self.rid, msg.msg_id)
            await sending
        return samples

    async def close(self) -> None:
        await self.sender.close()
        await self.recipient.close()


# ----------------------------------------------------------------------------- the run


async def measure(url: str, vaults: Path, messages: int, latency: int, repeats: int,
                  say: Callable[[str], None]) -> list[Round]:
    pair = await Pair.create(vaults, url)
    raw = await Raw.create(url)
    try:
        warm: list[Callable[[], Awaitable[object]]] = [
            lambda: pair.rate(min(50, messages)), lambda: raw.rate(min(50, messages))
        ]
        for step in warm:
            await step()
        rounds = []
        for r in range(repeats):
            e2e_rate = await pair.rate(messages)
            raw_rate = await raw.rate(messages)
            e2e_lat = _latencies(await pair.latency(latency))
            raw_lat = _latencies(await raw.latency(latency))
            one = Round(e2e_rate, *e2e_lat, raw_rate, *raw_lat)
            rounds.append(one)
            say(f"round {r + 1}/{repeats}: e2e {e2e_rate:.0f} msg/s p50 {e2e_lat[0]:.1f} ms "
                f"p99 {e2e_lat[1]:.1f} ms | raw {raw_rate:.0f} msg/s p50 {raw_lat[0]:.2f} ms "
                f"p99 {raw_lat[1]:.2f} ms")
        return rounds
    finally:
        await raw.close()
        await pair.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per rate run")
    parser.add_argument("--latency", type=int, default=100, help="messages per latency run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vault-dir", type=Path, default=None,
                        help="where the two vaults go (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.latency, args.repeats = 50, 20, 1

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    say(machine().describe())
    say(f"load average {', '.join(f'{x:.2f}' for x in load_average())}; "
        f"one spinning process gets {cpu_probe():.2f} of a core")
    with tempfile.TemporaryDirectory(prefix="kith-bench-e2e-") as tmp, \
            tempfile.TemporaryDirectory(prefix="kith-bench-vaults-", dir=args.vault_dir) as vdir:
        say(f"vaults in {vdir}; relay SQLite in {tmp}")
        relay, url = start_relay(Path(tmp))
        try:
            rounds = asyncio.run(
                measure(url, Path(vdir), args.messages, args.latency, args.repeats, say)
            )
        finally:
            stop_process(relay)

    def med(name: str) -> float:
        return median([getattr(r, name) for r in rounds])

    figures = {name: med(name) for name in Round.__dataclass_fields__}
    figures["rate_ratio_raw_over_e2e"] = figures["raw_rate"] / figures["e2e_rate"]
    figures["p50_ratio_e2e_over_raw"] = figures["e2e_p50_ms"] / figures["raw_p50_ms"]
    if args.json:
        print(json.dumps({"figures": figures, "rounds": [asdict(r) for r in rounds]}))
        return 0
    print(f"\nmedians of {len(rounds)} round(s), {args.messages} messages per rate run, "
          f"{args.latency} per latency run:")
    print(f"  end to end (2 profiles, Olm, vaults): {figures['e2e_rate']:8.0f} msg/s   "
          f"p50 {figures['e2e_p50_ms']:7.2f} ms   p99 {figures['e2e_p99_ms']:7.2f} ms")
    print(f"  raw relay path (no crypto, no vault): {figures['raw_rate']:8.0f} msg/s   "
          f"p50 {figures['raw_p50_ms']:7.2f} ms   p99 {figures['raw_p99_ms']:7.2f} ms")
    print(f"  ratio: raw/e2e throughput {figures['rate_ratio_raw_over_e2e']:.1f}x; "
          f"e2e/raw p50 latency {figures['p50_ratio_e2e_over_raw']:.1f}x "
          f"(spread of e2e rate over rounds: "
          f"{statistics.pstdev([r.e2e_rate for r in rounds]):.1f} msg/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
