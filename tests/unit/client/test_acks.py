"""The service acknowledges without waiting for the relay's answer: the ACK must still go to
the connection the message came on, and be counted until it is answered or cancelled."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

from kith.client.relay import RelayClient, RelayRefused
from kith.client.service import ClientService
from kith.protocol import relay as rp


class Pool:
    def __init__(self, refuse: bool = False) -> None:
        self.acks: list[bytes] = []
        self.quiet: list[bool] = []
        self.refuse = refuse

    async def ack(self, url: str, rid: bytes, mid: bytes, *, quiet: bool = False) -> None:
        self.acks.append(mid)
        self.quiet.append(quiet)
        if self.refuse:
            raise RelayRefused(rp.ErrorCode.NO_MESSAGE)


class Service:
    """Just enough of ClientService for its ACK path."""

    _ack = ClientService._ack
    _ack_done = ClientService._ack_done
    _spawn = ClientService._spawn
    _task_done = ClientService._task_done

    def __init__(self) -> None:
        self._pool: Any = Pool()
        self._inflight = 0
        self._stats: Counter[str] = Counter()
        self._activity = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._acks: set[asyncio.Task[Any]] = set()
        self._locked = False


def msg() -> rp.Msg:
    return rp.Msg(b"r" * 16, b"m" * 16, 0, b"")


async def test_an_ack_goes_to_the_pool_its_message_came_from() -> None:
    svc = Service()
    await svc._ack("ws://relay", msg())  # type: ignore[arg-type]
    old, svc._pool = svc._pool, Pool(refuse=True)  # a one-shot sync swaps pools meanwhile
    await asyncio.gather(*svc._acks)
    assert len(old.acks) == 1 and svc._pool.acks == []
    assert old.quiet == [True]  # the relay answers only a failure
    assert svc._stats["ack_failed"] == 0 and svc._inflight == 0


async def test_a_pending_ack_counts_until_it_is_answered_or_cancelled() -> None:
    svc = Service()
    await svc._ack("ws://relay", msg())  # type: ignore[arg-type]
    assert svc._inflight == 1  # a one-shot sync is not quiet yet
    for task in list(svc._tasks):
        task.cancel()  # lock() cancels it before its first step
    await asyncio.gather(*svc._tasks, return_exceptions=True)
    assert svc._inflight == 0 and not svc._acks


async def test_no_ack_is_started_once_the_service_is_locked() -> None:
    svc = Service()
    svc._locked = True
    await svc._ack("ws://relay", msg())  # type: ignore[arg-type]
    assert not svc._tasks and svc._inflight == 0


def test_corr_ids_wrap_without_ever_using_zero() -> None:
    """A long-lived connection sends more than 2**32 commands; the relay's own frames carry
    corr_id 0, so a command must never use it."""
    client = RelayClient.__new__(RelayClient)
    client._corr = itertools.count(0xFFFFFFFD)
    assert [client._next_corr() for _ in range(4)] == [0xFFFFFFFE, 0xFFFFFFFF, 1, 2]
