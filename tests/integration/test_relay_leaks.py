"""What a seized relay holds: search its files for plaintext and for client addresses.

Clients seal payloads before they reach a relay. Here the test seals with an AEAD (from the
`cryptography` package, test-side) a payload that contains a known marker, sends it through a
real relay process, and then reads every file the store wrote (SQLite database, WAL, shm; the
Redis RDB dump and append-only files) looking for the marker and for the clients' addresses
(IP and ephemeral ports). A control message sent *unsealed* must be found by the same search:
that proves the search can see what it looks for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from kith.client.relay import RelayClient
from kith.crypto.signing import SigningKey
from tests.support import RedisServer, RelayProcess

pytestmark = pytest.mark.integration

BLOCK = 1024
KEY = ChaCha20Poly1305.generate_key()


def seal(plain: bytes) -> bytes:
    nonce = os.urandom(12)
    padded = plain + bytes(BLOCK - 12 - 16 - len(plain))
    return nonce + ChaCha20Poly1305(KEY).encrypt(nonce, padded, None)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


async def exercise(url: str, marker: bytes, control: bytes) -> list[bytes]:
    """Send 100 sealed messages and 1 unsealed control; deliver and ack half. Returns the
    byte strings that identify the clients' network addresses."""
    key = SigningKey.generate()
    sender_key = SigningKey.generate()
    async with await RelayClient.connect(url) as alice, await RelayClient.connect(url) as bob:
        rid, sid = await alice.create_queue(key)
        await alice.secure(rid, key, sender_key.public_key)
        await bob.sender_auth(sid, sender_key)
        for i in range(100):
            await bob.send(sid, seal(marker + b" message %d" % i))
        await bob.send(sid, control + bytes(BLOCK - len(control)))
        await alice.subscribe(rid, key)
        for _ in range(50):
            m = await alice.next_message(timeout=5)
            await alice.ack(rid, m.msg_id)
        addresses = [b"127.0.0.1"]
        for c in (alice, bob):
            port = c._ws.local_address[1]
            addresses += [str(port).encode(), port.to_bytes(2, "big") + b"\x7f\x00\x00\x01"]
        return addresses


def search(files: list[Path], needles: list[bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in files:
        data = f.read_bytes()
        for n in needles:
            if n in data:
                found.setdefault(n.decode(errors="replace"), []).append(f.name)
    return found


async def test_sqlite_store_holds_no_plaintext_and_no_addresses(tmp_path: Path) -> None:
    marker, control = b"KITH-SECRET-" + os.urandom(6).hex().encode(), b"KITH-CONTROL-UNSEALED"
    relay = RelayProcess("--store", "sqlite", "--db", str(tmp_path / "relay.db"),
                         "--block-size", str(BLOCK))
    try:
        addresses = await exercise(relay.url, marker, control)
    finally:
        relay.kill()  # kill -9: the WAL is left exactly as it was, not checkpointed
    files = files_under(tmp_path)
    assert any(f.name.endswith("-wal") for f in files), "expected a WAL file to search"
    assert search(files, [control]), "the search must find the unsealed control message"
    assert search(files, [marker, *addresses]) == {}


@pytest.mark.redis
async def test_redis_store_holds_no_plaintext_and_no_addresses(tmp_path: Path) -> None:
    marker, control = b"KITH-SECRET-" + os.urandom(6).hex().encode(), b"KITH-CONTROL-UNSEALED"
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        relay = RelayProcess("--store", "redis", "--redis-url", redis.url,
                             "--block-size", str(BLOCK))
        try:
            addresses = await exercise(relay.url, marker, control)
        finally:
            relay.stop()
        redis.dump()
    finally:
        redis.stop()
    files = [f for f in files_under(tmp_path) if f.name != "redis.log"]
    assert any(f.name == "dump.rdb" for f in files)
    assert search(files, [control]), "the search must find the unsealed control message"
    assert search(files, [marker, *addresses]) == {}
