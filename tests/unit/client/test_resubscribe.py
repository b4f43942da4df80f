"""Re-subscribing a new connection: refusals that must not reconnect for ever, and failures
that must not leave a connection nobody reads."""

from __future__ import annotations

import asyncio

import pytest

from kith.client.relay import RelayProtocolError, RelayRefused
from kith.client.transport import SUB_PIPELINE, RelayPool, _Relay, _Subscription
from kith.crypto.signing import SigningKey
from kith.protocol import relay as rp


class Client:
    """Answers each SUB from a table; records how many were in flight at once."""

    def __init__(self, answers: dict[bytes, BaseException | None]) -> None:
        self.answers = answers
        self.in_flight = 0
        self.most_in_flight = 0

    async def subscribe(self, rid: bytes, key: SigningKey) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            answer = self.answers.get(rid)
            if answer is not None:
                raise answer
        finally:
            self.in_flight -= 1


async def noop(url: str, msg: rp.Msg) -> None:
    return None


def relay_with(n: int) -> _Relay:
    relay = _Relay(RelayPool(noop), "ws://relay")
    for i in range(n):
        rid = i.to_bytes(16, "big")
        relay.subs[rid] = _Subscription(rid, SigningKey.generate())
    return relay


async def test_subs_go_out_in_batches_and_unknown_queues_are_forgotten() -> None:
    relay = relay_with(150)
    gone = (3).to_bytes(16, "big")
    full = (4).to_bytes(16, "big")
    client = Client({gone: RelayRefused(rp.ErrorCode.AUTH), full: RelayRefused(rp.ErrorCode.QUOTA)})
    await relay._subscribe_all(client)  # type: ignore[arg-type]
    assert client.most_in_flight == SUB_PIPELINE
    assert gone not in relay.subs  # the relay does not know it: never asked again
    assert full in relay.subs  # too many on one connection: kept for the next connection


async def test_a_failure_that_is_not_a_relay_answer_restarts_the_connection() -> None:
    relay = relay_with(3)
    client = Client({(1).to_bytes(16, "big"): ValueError("a bug")})
    with pytest.raises(RelayProtocolError):
        await relay._subscribe_all(client)  # type: ignore[arg-type]
