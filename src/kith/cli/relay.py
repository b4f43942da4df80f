"""``kith relay serve``: build a relay from settings and run it until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys

from kith.relay import config as relay_config
from kith.relay.server import RelayServer


def serve(args: argparse.Namespace) -> int:
    settings = relay_config.load(args.config).with_overrides(
        host=args.host,
        port=args.port,
        store=args.store,
        db=args.db,
        stage_ms=args.stage_ms,
        redis_url=args.redis_url,
        metrics_port=args.metrics_port,
        block_size=args.block_size,
        ttl_days=args.ttl_days,
        quota_messages=args.quota_messages,
        max_store_mb=args.max_store_mb,
        queue_ttl_days=args.queue_ttl_days,
    )
    server_config = settings.server_config()
    logging.basicConfig(level=logging.INFO, format="kith relay: %(message)s", stream=sys.stderr)
    store = settings.make_store()
    asyncio.run(_run(RelayServer(store, server_config)))
    return 0


def _tune_gc() -> None:
    """A relay keeps a large, long-lived heap (connections, subscriptions) and allocates many
    short-lived objects per message. With CPython's default thresholds the full collections
    that walk the long-lived heap run often and free nothing, stalling every connection for
    tens of milliseconds. Objects that exist at start-up are frozen out of collection, and the
    young generation is collected less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


async def _run(relay: RelayServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await relay.start()
    _tune_gc()
    # A line scripts and tests can wait for; it names the bound port (useful with --port 0).
    print(f"kith relay ready on {relay.config.host}:{relay.port}", flush=True)
    if relay.metrics_port is not None:
        print(f"kith relay metrics on {relay.config.metrics_host}:{relay.metrics_port}", flush=True)
    try:
        await stop.wait()
    finally:
        await relay.stop()
