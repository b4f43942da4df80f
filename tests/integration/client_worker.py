"""A client process for the crash tests: unlock a profile, send numbered messages, flush.

    python -m tests.integration.client_worker VAULT CONTACT FIRST COUNT

Runs the service in long-running mode, sends COUNT messages "m<FIRST>".."m<FIRST+COUNT-1>"
to CONTACT, printing ``queued <i>`` after each ``send()`` returned (the message is then in the
vault), then waits until the outbox is empty and prints ``flushed``. The test kills it with
SIGKILL at a moment of its choosing. Talks only to the relay named in the profile (127.0.0.1).
"""

from __future__ import annotations

import asyncio
import sys

from kith.client.service import ClientOptions, ClientService
from kith.client.transport import Backoff

PASSPHRASE = "a passphrase for tests only"  # noqa: S105 (a test profile's passphrase)
OPTIONS = ClientOptions(
    connect_timeout=1.0,
    backoff=Backoff(initial=0.05, maximum=0.5, jitter=0.1),
    settle=0.3,
    gap_grace=0.3,
)


async def main(vault: str, contact: str, first: int, count: int) -> None:
    service = await ClientService.unlock(vault, PASSPHRASE, options=OPTIONS)
    try:
        await service.start()
        print("started", flush=True)
        for i in range(first, first + count):
            await service.send(contact, f"m{i}")
            print(f"queued {i}", flush=True)
            await asyncio.sleep(0.005)
        while (await service.sync(5)).queued:  # noqa: ASYNC110 (polls the outbox)
            await asyncio.sleep(0.1)
        print("flushed", flush=True)
    finally:
        await service.lock()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
