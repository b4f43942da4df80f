"""``kith demo``: the quick start's main job, printed step by step.

Starts a relay on 127.0.0.1 with the embedded SQLite store in a temporary directory, then runs
a short session against it over real WebSockets: a recipient creates a queue, secures it with
the sender's key, the sender proves that key and sends padded messages, the recipient receives
them as pushes and acknowledges them, and finally the relay's files are searched for the text
that was sent.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from kith.client.relay import RelayClient
from kith.crypto.signing import SigningKey
from kith.protocol.relay import max_frame_size
from kith.relay.server import RelayServer, ServerConfig
from kith.relay.store.base import Store


def _say(step: int, total: int, text: str) -> None:
    print(f"[{step}/{total}] {text}", flush=True)


def _pad(text: str, size: int) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw + os.urandom(size - 2 - len(raw))


def _unpad(block: bytes) -> str:
    n = int.from_bytes(block[:2], "big")
    return block[2 : 2 + n].decode()


def _files_containing(folder: Path, texts: list[str]) -> list[str]:
    return [
        p.name for p in folder.iterdir() if any(t.encode() in p.read_bytes() for t in texts)
    ]


async def run_demo(store: str = "sqlite") -> int:
    total = 6
    with tempfile.TemporaryDirectory(prefix="kith-demo-") as tmp:
        db = Path(tmp) / "relay.db"
        backend: Store
        if store == "memory":
            from kith.relay.store.memory import MemoryStore

            backend = MemoryStore()
        else:
            from kith.relay.store.sqlite import SQLiteStore

            backend = SQLiteStore(db)
        relay = RelayServer(backend, ServerConfig(host="127.0.0.1", port=0))
        await relay.start()
        try:
            url = f"ws://127.0.0.1:{relay.port}"
            where = f"SQLite store {db}" if store == "sqlite" else "in-memory store"
            _say(1, total, f"relay listening on {url} ({where})")

            alice_key, bob_key = SigningKey.generate(), SigningKey.generate()
            async with await RelayClient.connect(url) as alice, \
                    await RelayClient.connect(url) as bob:
                rid, sid = await alice.create_queue(alice_key)
                _say(2, total, f"recipient created a queue: recipient id {rid.hex()[:12]}..., "
                     f"sender id {sid.hex()[:12]}... (two unrelated random ids)")
                await alice.secure(rid, alice_key, bob_key.public_key)
                await alice.subscribe(rid, alice_key)
                _say(3, total, "recipient secured the queue with the sender's key and subscribed")

                texts = ["hello from the other side", "meet at the usual place?", "stay safe"]
                await bob.sender_auth(sid, bob_key)
                started = time.perf_counter()
                for text in texts:
                    await bob.send(sid, _pad(text, bob.block_size))
                _say(4, total, f"sender proved its key and sent {len(texts)} messages, each "
                     f"padded to the relay's {bob.block_size}-byte block "
                     f"(frame {max_frame_size(bob.block_size)} bytes on the wire)")

                for _ in texts:
                    msg = await alice.next_message(timeout=10)
                    await alice.ack(rid, msg.msg_id)
                    ms = (time.perf_counter() - started) * 1000
                    _say(5, total, f"recipient got {_unpad(msg.body)!r} after {ms:.1f} ms "
                         "and acknowledged it (the relay deleted it)")
            stats = await backend.stats()
        finally:
            await relay.stop()
        leftover = stats.get("messages", 0)
        found = _files_containing(Path(tmp), texts) if store == "sqlite" else []
        _say(6, total, f"relay now holds {leftover} messages; relay files containing the sent "
             f"text: {found or 'none'}")
        print("note: this relay-level demo pads but does not encrypt; kith clients seal every "
              "message end to end before it reaches a relay.")
    return 0 if leftover == 0 else 1
