"""Micro-benchmark of the relay store backends: put+ack pairs per second, no relay, no sockets
to clients.

Why: every SEND and ACK the relay answers waits for the store, so a backend's put+ack rate is
the ceiling of the whole relay. This measures that ceiling for each backend, the way the relay
uses it: many concurrent tasks, each storing a message in its own queue and acknowledging it
as soon as the put returns (store-then-deliver, interleaved), with relay-sized bodies. It
asserts nothing.

Settings:

- memory: the reference store (no durability), the ceiling of the Python around the stores;
- sqlite: a fresh file in a temporary directory (WAL, synchronous=FULL, secure_delete on);
- redis: a redis-server started here on 127.0.0.1 with ``appendonly yes`` and
  ``appendfsync always`` (the durability the relay's contract assumes), in a temp directory.

Figure: the median of ``--repeats`` runs of ``--pairs`` put+ack pairs each, after a warm-up.

Run: ``.venv/bin/python bench/store_micro.py`` (about a minute), ``--body 256`` for small
messages, ``--stores sqlite`` for one backend. Everything talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    BenchError,
    free_port,
    load_average,
    machine,
    median,
    stop_process,
    wait_for_port,
)

from kith.relay.store.base import Limits, QueueRecord, Store

LIMITS = Limits(max_messages=10**6, max_bytes=10**12)


async def run_once(store: Store, pairs: int, workers: int, body: bytes) -> float:
    """Put+ack ``pairs`` messages from ``workers`` concurrent tasks; return pairs per second."""
    queues = [QueueRecord(os.urandom(16), os.urandom(16), os.urandom(32)) for _ in range(workers)]
    for rec in queues:
        await store.create_queue(rec, 0)
    per = pairs // workers

    async def worker(rec: QueueRecord) -> None:
        for _ in range(per):
            msg_id = os.urandom(16)
            await store.put_message(rec.sender_id, msg_id, body, 0, LIMITS)
            if not await store.ack(rec.recipient_id, msg_id):
                raise BenchError("ack found no message")

    started = time.perf_counter()
    await asyncio.gather(*(worker(rec) for rec in queues))
    elapsed = time.perf_counter() - started
    for rec in queues:
        await store.delete_queue(rec.recipient_id)
    return per * workers / elapsed


async def bench_store(
    make: Callable[[], Store], args: argparse.Namespace, body: bytes
) -> list[float]:
    store = make()
    await store.start(lambda rid: None)
    try:
        await run_once(store, min(args.pairs, 2000), args.workers, body)  # warm-up
        return [await run_once(store, args.pairs, args.workers, body) for _ in range(args.repeats)]
    finally:
        await store.close()


def factory(name: str, workdir: Path, procs: list[subprocess.Popen[bytes]]) -> Callable[[], Store]:
    if name == "memory":
        from kith.relay.store.memory import MemoryStore

        return MemoryStore
    if name == "sqlite":
        from kith.relay.store.sqlite import SQLiteStore

        return functools.partial(SQLiteStore, workdir / "relay.db")
    if name == "redis":
        from kith.relay.store.redis import RedisStore

        rdir = workdir / "redis"
        rdir.mkdir()
        proc, url = start_redis(rdir)
        procs.append(proc)
        return functools.partial(RedisStore, url)
    raise BenchError(f"unknown store {name!r}")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--save", "", "--appendonly", "yes", "--appendfsync", "always",
         "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10)
    except BenchError:
        stop_process(proc)
        raise
    return proc, f"redis://127.0.0.1:{port}/0"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="memory,sqlite,redis")
    parser.add_argument("--pairs", type=int, default=20_000, help="put+ack pairs per run")
    parser.add_argument("--workers", type=int, default=200, help="concurrent tasks (queues)")
    parser.add_argument("--body", type=int, default=4096, help="body bytes (relay block size)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    body = os.urandom(args.body)
    print(machine().describe())
    print(f"load average before: {load_average()[0]:.2f}")
    print(f"{args.pairs} put+ack pairs per run, {args.workers} concurrent tasks, "
          f"{args.body}-byte bodies, median of {args.repeats} runs")

    with tempfile.TemporaryDirectory(prefix="kith-store-bench-") as tmp:
        workdir = Path(tmp)
        for name in args.stores.split(","):
            procs: list[subprocess.Popen[bytes]] = []
            try:
                rates = await bench_store(factory(name, workdir, procs), args, body)
                shown = ", ".join(f"{r:,.0f}" for r in rates)
                print(f"{name:7s} {median(rates):10,.0f} put+ack pairs/s   (runs: {shown})")
            except BenchError as exc:
                print(f"{name:7s} skipped: {exc}")
            finally:
                for proc in procs:
                    stop_process(proc)
    print(f"load average after: {load_average()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
