"""The relay store contract (kith.relay.store.base), run against memory, SQLite and Redis.

Each test states one promise of the contract and tries to break it the way a careless or
hostile caller would: wrong ids, full queues, unsecured sends to secured queues, expired
messages, double acks. Refusals must change nothing.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from kith.errors import StoreUnavailable
from kith.relay.store.base import (
    USE_GRANULE,
    AlreadySecured,
    DuplicateId,
    Limits,
    NoQueue,
    NotAuthorized,
    QueueRecord,
    QuotaExceeded,
    Store,
)

from .conftest import Hints, StoreFactory, new_record

NOW = 1_700_000_000
LIMITS = Limits()


def mid() -> bytes:
    return os.urandom(16)


async def fill(store: Store, rec: QueueRecord, n: int, *, now: int = NOW) -> list[bytes]:
    ids = [mid() for _ in range(n)]
    for i, m in enumerate(ids):
        await store.put_message(rec.sender_id, m, b"body %d" % i, now, LIMITS)
    return ids


async def snapshot(store: Store, rec: QueueRecord) -> tuple[object, ...]:
    """Everything observable about one queue and the store as a whole."""
    return (
        await store.queue_by_recipient(rec.recipient_id),
        await store.queue_by_sender(rec.sender_id),
        await store.pending(rec.recipient_id, 0, 10_000, NOW, LIMITS),
        await store.stats(),
    )


# ---------------------------------------------------------------------------- queues


async def test_create_and_look_up_by_either_id(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    assert await store.queue_by_recipient(rec.recipient_id) == rec
    assert await store.queue_by_sender(rec.sender_id) == rec
    # The two ids live in separate namespaces: neither finds the queue through the other.
    assert await store.queue_by_recipient(rec.sender_id) is None
    assert await store.queue_by_sender(rec.recipient_id) is None
    assert await store.queue_by_recipient(os.urandom(16)) is None


async def test_create_keeps_a_preset_sender_key(store: Store) -> None:
    rec = new_record(sender_key=os.urandom(32))
    await store.create_queue(rec, NOW)
    assert await store.queue_by_sender(rec.sender_id) == rec


@pytest.mark.parametrize("clash", ["recipient", "sender"])
async def test_duplicate_ids_are_refused_and_change_nothing(store: Store, clash: str) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    await fill(store, rec, 2)
    before = await snapshot(store, rec)
    other = new_record()
    dup = QueueRecord(
        rec.recipient_id if clash == "recipient" else other.recipient_id,
        rec.sender_id if clash == "sender" else other.sender_id,
        os.urandom(32),
    )
    with pytest.raises(DuplicateId):
        await store.create_queue(dup, NOW)
    assert await snapshot(store, rec) == before
    assert await store.queue_by_recipient(other.recipient_id) is None
    assert await store.queue_by_sender(other.sender_id) is None


async def test_secure_once_same_key_again_is_a_no_op_other_key_refused(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    key, other = os.urandom(32), os.urandom(32)
    await store.secure_queue(rec.recipient_id, key)
    secured = await store.queue_by_recipient(rec.recipient_id)
    assert secured is not None and secured.sender_key == key
    await store.secure_queue(rec.recipient_id, key)
    with pytest.raises(AlreadySecured):
        await store.secure_queue(rec.recipient_id, other)
    assert await store.queue_by_sender(rec.sender_id) == secured


async def test_delete_removes_the_queue_and_every_message(store: Store) -> None:
    rec, keep = new_record(), new_record()
    await store.create_queue(rec, NOW)
    await store.create_queue(keep, NOW)
    await fill(store, rec, 3)
    await fill(store, keep, 1)
    await store.delete_queue(rec.recipient_id)
    assert await store.queue_by_recipient(rec.recipient_id) is None
    assert await store.queue_by_sender(rec.sender_id) is None
    with pytest.raises(NoQueue):
        await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    with pytest.raises(NoQueue):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    with pytest.raises(NoQueue):
        await store.delete_queue(rec.recipient_id)
    assert len(await store.pending(keep.recipient_id, 0, 10, NOW, LIMITS)) == 1
    assert await store.stats() == {"queues": 1, "messages": 1, "bytes": len(b"body 0")}
    # The ids are free again (a recreated queue starts from scratch, not from the old one).
    await store.create_queue(rec, NOW)
    assert await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS) == []
    ref = await store.put_message(rec.sender_id, mid(), b"y", NOW, LIMITS)
    assert ref.seq == 1


async def test_empty_queues_and_empty_bodies_are_ordinary(store: Store) -> None:
    """Zero is a count like any other: deleting an empty queue, storing and acking b""."""
    empty, rec = new_record(), new_record()
    await store.create_queue(empty, NOW)
    await store.create_queue(rec, NOW)
    await store.delete_queue(empty.recipient_id)
    m = mid()
    await store.put_message(rec.sender_id, m, b"", NOW, LIMITS)
    [got] = await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert (got.msg_id, got.body) == (m, b"")
    assert await store.stats() == {"queues": 1, "messages": 1, "bytes": 0}
    assert await store.ack(rec.recipient_id, m)
    await store.put_message(rec.sender_id, mid(), b"", NOW, Limits(ttl_seconds=1))
    assert await store.expire(NOW + 2, Limits(ttl_seconds=1)) == 1
    await store.delete_queue(rec.recipient_id)
    assert await store.stats() == {"queues": 0, "messages": 0, "bytes": 0}


# ---------------------------------------------------------------------------- messages


async def test_put_returns_where_the_message_went_and_pending_returns_it(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    m = mid()
    ref = await store.put_message(rec.sender_id, m, b"\x00ciphertext\xff", NOW + 60, LIMITS)
    assert (ref.recipient_id, ref.seq, ref.received_at) == (rec.recipient_id, 1, NOW + 60)
    [got] = await store.pending(rec.recipient_id, 0, 10, NOW + 60, LIMITS)
    assert (got.seq, got.msg_id, got.received_at, got.body) == (
        1, m, NOW + 60, b"\x00ciphertext\xff"
    )


async def test_pending_is_in_put_order_with_contiguous_seqs(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    ids = await fill(store, rec, 12)
    got = await store.pending(rec.recipient_id, 0, 100, NOW, LIMITS)
    assert [m.msg_id for m in got] == ids
    assert [m.seq for m in got] == list(range(1, 13))
    assert [m.body for m in got] == [b"body %d" % i for i in range(12)]


async def test_after_seq_pages_through_a_queue(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    ids = await fill(store, rec, 7)
    seen: list[bytes] = []
    after = 0
    pages = 0
    while page := await store.pending(rec.recipient_id, after, 3, NOW, LIMITS):
        assert len(page) <= 3
        seen += [m.msg_id for m in page]
        after = page[-1].seq
        pages += 1
    assert seen == ids
    assert pages == 3
    assert await store.pending(rec.recipient_id, 0, 0, NOW, LIMITS) == []


async def test_seqs_are_never_reused_after_acks(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    ids = await fill(store, rec, 3)
    for m in ids:
        assert await store.ack(rec.recipient_id, m)
    ref = await store.put_message(rec.sender_id, mid(), b"later", NOW, LIMITS)
    assert ref.seq == 4
    # A subscriber that has seen up to seq 3 must still find the new message.
    [got] = await store.pending(rec.recipient_id, 3, 10, NOW, LIMITS)
    assert got.seq == 4


async def test_concurrent_puts_keep_call_order_per_queue(store: Store) -> None:
    queues = [new_record() for _ in range(4)]
    for rec in queues:
        await store.create_queue(rec, NOW)
    calls = [(queues[i % 4], mid(), b"%d" % i) for i in range(200)]
    refs = await asyncio.gather(
        *(store.put_message(r.sender_id, m, b, NOW, LIMITS) for r, m, b in calls)
    )
    for rec in queues:
        expected = [m for r, m, _ in calls if r is rec]
        got = await store.pending(rec.recipient_id, 0, 1000, NOW, LIMITS)
        assert [m.msg_id for m in got] == expected
        assert [m.seq for m in got] == list(range(1, 51))
    for ref, (rec, _, _) in zip(refs, calls, strict=True):
        assert ref.recipient_id == rec.recipient_id


async def test_duplicate_message_id_in_one_queue_is_refused(store: Store) -> None:
    a, b = new_record(), new_record()
    await store.create_queue(a, NOW)
    await store.create_queue(b, NOW)
    m = mid()
    await store.put_message(a.sender_id, m, b"first", NOW, LIMITS)
    before = await snapshot(store, a)
    with pytest.raises(DuplicateId):
        await store.put_message(a.sender_id, m, b"second", NOW, LIMITS)
    assert await snapshot(store, a) == before
    # The same id in another queue is unrelated.
    assert (await store.put_message(b.sender_id, m, b"other", NOW, LIMITS)).seq == 1


# ---------------------------------------------------------------------------- quotas


async def test_quota_by_count_refuses_and_stores_nothing(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    limits = Limits(max_messages=3)
    ids = [mid() for _ in range(3)]
    for m in ids:
        await store.put_message(rec.sender_id, m, b"x", NOW, limits)
    before = await snapshot(store, rec)
    with pytest.raises(QuotaExceeded):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, limits)
    assert await snapshot(store, rec) == before
    # Acknowledging frees room, and the refused put did not use up a seq.
    assert await store.ack(rec.recipient_id, ids[0])
    ref = await store.put_message(rec.sender_id, mid(), b"x", NOW, limits)
    assert ref.seq == 4


async def test_quota_by_bytes_refuses_and_stores_nothing(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    limits = Limits(max_bytes=100)
    await store.put_message(rec.sender_id, mid(), b"a" * 60, NOW, limits)
    before = await snapshot(store, rec)
    with pytest.raises(QuotaExceeded):
        await store.put_message(rec.sender_id, mid(), b"b" * 41, NOW, limits)
    assert await snapshot(store, rec) == before
    await store.put_message(rec.sender_id, mid(), b"c" * 40, NOW, limits)  # exactly full
    assert (await store.stats())["bytes"] == 100
    with pytest.raises(QuotaExceeded):
        await store.put_message(rec.sender_id, mid(), b"d", NOW, limits)


async def test_quota_is_per_queue(store: Store) -> None:
    a, b = new_record(), new_record()
    await store.create_queue(a, NOW)
    await store.create_queue(b, NOW)
    limits = Limits(max_messages=1)
    await store.put_message(a.sender_id, mid(), b"x", NOW, limits)
    await store.put_message(b.sender_id, mid(), b"x", NOW, limits)
    with pytest.raises(QuotaExceeded):
        await store.put_message(a.sender_id, mid(), b"x", NOW, limits)


async def test_concurrent_puts_never_exceed_the_quota(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    limits = Limits(max_messages=20)
    results = await asyncio.gather(
        *(store.put_message(rec.sender_id, mid(), b"x", NOW, limits) for _ in range(60)),
        return_exceptions=True,
    )
    stored = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(stored) == 20 and len(refused) == 40
    assert sorted(r.seq for r in stored) == list(range(1, 21))
    assert len(await store.pending(rec.recipient_id, 0, 100, NOW, limits)) == 20


async def test_the_store_wide_cap_counts_every_queue_and_frees_on_ack(store: Store) -> None:
    """Past max_store_bytes (all queues together) a put is refused, whichever queue it is
    for; an ACK, a queue deletion and expiry each free room again."""
    a, b, c = new_record(), new_record(), new_record()
    for rec in (a, b, c):
        await store.create_queue(rec, NOW)
    cap = Limits(max_store_bytes=30)
    first = mid()
    await store.put_message(a.sender_id, first, b"x" * 10, NOW, cap)
    await store.put_message(b.sender_id, mid(), b"y" * 10, NOW, cap)
    await store.put_message(c.sender_id, mid(), b"z" * 10, NOW - 10**6, cap)  # expires first
    for rec in (a, b, c):
        with pytest.raises(QuotaExceeded):
            await store.put_message(rec.sender_id, mid(), b"w", NOW, cap)
    assert await store.ack(a.recipient_id, first)
    await store.put_message(a.sender_id, mid(), b"w" * 10, NOW, cap)
    with pytest.raises(QuotaExceeded):
        await store.put_message(a.sender_id, mid(), b"w", NOW, cap)
    await store.delete_queue(b.recipient_id)
    await store.put_message(a.sender_id, mid(), b"v" * 10, NOW, cap)
    assert await store.expire(NOW, Limits(ttl_seconds=1000)) == 1
    await store.put_message(c.sender_id, mid(), b"u" * 10, NOW, cap)
    with pytest.raises(QuotaExceeded):
        await store.put_message(c.sender_id, mid(), b"u", NOW, cap)
    # Without a cap nothing is refused for it.
    await store.put_message(c.sender_id, mid(), b"t" * 10, NOW, Limits())


# ---------------------------------------------------------------------------- sender keys


async def test_secured_queue_refuses_sends_without_its_key(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    key = os.urandom(32)
    await store.secure_queue(rec.recipient_id, key)
    before = await snapshot(store, rec)
    with pytest.raises(NotAuthorized):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    with pytest.raises(NotAuthorized):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS, os.urandom(32))
    assert await snapshot(store, rec) == before
    ref = await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS, key)
    assert ref.seq == 1


async def test_securing_takes_effect_for_the_next_put(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    # Unsecured: any sender key (or none) is accepted.
    await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS, os.urandom(32))
    await store.secure_queue(rec.recipient_id, os.urandom(32))
    with pytest.raises(NotAuthorized):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)


# ---------------------------------------------------------------------------- expiry


async def test_pending_hides_expired_messages(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    limits = Limits(ttl_seconds=100)
    old, young = mid(), mid()
    await store.put_message(rec.sender_id, old, b"old", NOW, limits)
    await store.put_message(rec.sender_id, young, b"young", NOW + 50, limits)
    # Exactly ttl old is still deliverable; one second more is not.
    assert len(await store.pending(rec.recipient_id, 0, 10, NOW + 100, limits)) == 2
    got = await store.pending(rec.recipient_id, 0, 10, NOW + 101, limits)
    assert [m.msg_id for m in got] == [young]
    # A limit counts deliverable messages, not expired ones skipped on the way.
    got = await store.pending(rec.recipient_id, 0, 1, NOW + 101, limits)
    assert [m.msg_id for m in got] == [young]


async def test_expire_deletes_old_messages_only(store: Store) -> None:
    a, b = new_record(), new_record()
    await store.create_queue(a, NOW)
    await store.create_queue(b, NOW)
    limits = Limits(ttl_seconds=100)
    await store.put_message(a.sender_id, mid(), b"old-a", NOW, limits)
    await store.put_message(b.sender_id, mid(), b"old-b", NOW, limits)
    keep = mid()
    await store.put_message(a.sender_id, keep, b"young", NOW + 90, limits)
    assert await store.expire(NOW + 100, limits) == 0
    assert await store.expire(NOW + 150, limits) == 2
    assert await store.expire(NOW + 150, limits) == 0
    assert await store.stats() == {"queues": 2, "messages": 1, "bytes": len(b"young")}
    # Deleted, not just hidden: visible again from an earlier "now" would mean it is still there.
    got = await store.pending(a.recipient_id, 0, 10, NOW, limits)
    assert [m.msg_id for m in got] == [keep]
    assert await store.pending(b.recipient_id, 0, 10, NOW, limits) == []


async def test_expire_frees_quota(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    limits = Limits(max_messages=2, ttl_seconds=100)
    for _ in range(2):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, limits)
    with pytest.raises(QuotaExceeded):
        await store.put_message(rec.sender_id, mid(), b"x", NOW + 200, limits)
    assert await store.expire(NOW + 200, limits) == 2
    ref = await store.put_message(rec.sender_id, mid(), b"x", NOW + 200, limits)
    assert ref.seq == 3


async def test_expire_handles_more_than_one_batch(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    limits = Limits(max_messages=5000, ttl_seconds=10)
    await asyncio.gather(
        *(store.put_message(rec.sender_id, mid(), b"x", NOW, limits) for _ in range(2100))
    )
    assert await store.expire(NOW + 11, limits) == 2100
    assert (await store.stats())["messages"] == 0


# ---------------------------------------------------------------------------- idle queues

DAY = 24 * 3600
#: Messages outlive the queue TTL here, so what removes them below is the queue's deletion.
IDLE = Limits(ttl_seconds=10**9, queue_ttl_seconds=90 * DAY)


async def test_a_queue_unused_past_the_queue_ttl_is_gone_with_its_messages(
    store: Store,
) -> None:
    idle, sent_to, read, held = (new_record() for _ in range(4))
    for rec in (idle, sent_to, read, held):
        await store.create_queue(rec, NOW)
    idle_ids = await fill(store, idle, 3)
    await fill(store, sent_to, 1)
    later = NOW + IDLE.queue_ttl_seconds + USE_GRANULE  # surely past the TTL for `idle`
    recent = later - 5 * DAY
    await store.put_message(sent_to.sender_id, mid(), b"fresh", recent, IDLE)
    await store.pending(read.recipient_id, 0, 10, recent, IDLE)
    await store.touch_queues([held.recipient_id], recent)
    assert await store.stats() == {"queues": 4, "messages": 5, "bytes": 3 * 6 + 6 + 5}

    assert await store.expire_queues(later, IDLE) == 1
    assert await store.expire_queues(later, IDLE) == 0
    # The queue, both its ids, its messages and its share of the counters are gone.
    assert await store.stats() == {"queues": 3, "messages": 2, "bytes": 6 + 5}
    assert await store.queue_by_recipient(idle.recipient_id) is None
    assert await store.queue_by_sender(idle.sender_id) is None
    with pytest.raises(NoQueue):
        await store.pending(idle.recipient_id, 0, 10, later, IDLE)
    with pytest.raises(NoQueue):
        await store.put_message(idle.sender_id, mid(), b"x", later, IDLE)
    with pytest.raises(NoQueue):
        await store.ack(idle.recipient_id, idle_ids[0])
    with pytest.raises(NoQueue):
        await store.secure_queue(idle.recipient_id, os.urandom(32))
    with pytest.raises(NoQueue):
        await store.delete_queue(idle.recipient_id)
    # Marking a deleted queue used does not bring it back, nor count a queue that is not there.
    await store.touch_queues([idle.recipient_id, os.urandom(16)], later)
    assert await store.queue_by_recipient(idle.recipient_id) is None
    assert (await store.stats())["queues"] == 3
    # Message expiry no longer finds the deleted queue's messages anywhere.
    assert await store.expire(later + 2 * 10**9, IDLE) == 2
    for rec in (sent_to, read, held):
        assert await store.queue_by_recipient(rec.recipient_id) == rec


async def test_no_queue_is_deleted_before_its_ttl_whatever_the_rounding(store: Store) -> None:
    """The stored mark is coarse (a week); rounding may keep a queue longer, never shorter."""
    ttl = IDLE.queue_ttl_seconds
    recs = []
    for k in range(8):  # last uses spread across more than one week, at odd seconds
        rec = new_record()
        recs.append((rec, NOW + k * DAY + 7 * k + 1))
        await store.create_queue(rec, NOW - 400 * DAY)
    for i, (rec, used) in enumerate(recs):
        if i % 2:
            await store.put_message(rec.sender_id, mid(), b"x", used, IDLE)
        else:
            await store.touch_queues([rec.recipient_id], used)
    removed = 0
    for k, (_, used) in enumerate(recs):  # ascending last use
        removed += await store.expire_queues(used + ttl - 1, IDLE)
        # Every queue used at or after `used` is less than the TTL idle: all must be there.
        for rec, _ in recs[k:]:
            assert await store.queue_by_recipient(rec.recipient_id) == rec
    assert removed < len(recs) - 1  # rounding removed some early ones at most, never all
    last = recs[-1][1]
    assert await store.expire_queues(last + ttl + USE_GRANULE, IDLE) == len(recs) - removed


async def test_an_old_timestamp_does_not_age_a_queue(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    await store.touch_queues([rec.recipient_id], NOW + 60 * DAY)
    await store.put_message(rec.sender_id, mid(), b"x", NOW, IDLE)
    await store.touch_queues([rec.recipient_id], NOW)
    await store.pending(rec.recipient_id, 0, 10, NOW, IDLE)
    assert await store.expire_queues(NOW + 60 * DAY + IDLE.queue_ttl_seconds - 1, IDLE) == 0


async def test_expire_queues_handles_more_than_one_batch(store: Store) -> None:
    recs = [new_record() for _ in range(40)]
    for rec in recs:
        await store.create_queue(rec, NOW)
        await store.put_message(rec.sender_id, mid(), b"x", NOW, IDLE)
    assert await store.expire_queues(NOW + IDLE.queue_ttl_seconds + USE_GRANULE, IDLE) == 40
    assert await store.stats() == {"queues": 0, "messages": 0, "bytes": 0}


# ---------------------------------------------------------------------------- acks


async def test_ack_deletes_one_message_and_reports_whether_it_was_there(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    ids = await fill(store, rec, 3)
    assert await store.ack(rec.recipient_id, ids[1]) is True
    assert await store.ack(rec.recipient_id, ids[1]) is False
    assert await store.ack(rec.recipient_id, mid()) is False
    got = await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert [m.msg_id for m in got] == [ids[0], ids[2]]
    assert (await store.stats())["messages"] == 2


async def test_ack_only_touches_its_own_queue(store: Store) -> None:
    a, b = new_record(), new_record()
    await store.create_queue(a, NOW)
    await store.create_queue(b, NOW)
    [m] = await fill(store, a, 1)
    assert await store.ack(b.recipient_id, m) is False
    assert len(await store.pending(a.recipient_id, 0, 10, NOW, LIMITS)) == 1


# ---------------------------------------------------------------------------- bad ids


async def test_unknown_ids_raise_no_queue_and_change_nothing(store: Store) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    await fill(store, rec, 2)
    before = await snapshot(store, rec)
    ghost = os.urandom(16)
    with pytest.raises(NoQueue):
        await store.put_message(ghost, mid(), b"x", NOW, LIMITS)
    with pytest.raises(NoQueue):
        await store.pending(ghost, 0, 10, NOW, LIMITS)
    with pytest.raises(NoQueue):
        await store.pending(ghost, 0, 0, NOW, LIMITS)
    with pytest.raises(NoQueue):
        await store.ack(ghost, mid())
    with pytest.raises(NoQueue):
        await store.secure_queue(ghost, os.urandom(32))
    with pytest.raises(NoQueue):
        await store.delete_queue(ghost)
    # A sender id is not a recipient id, and vice versa.
    with pytest.raises(NoQueue):
        await store.ack(rec.sender_id, mid())
    with pytest.raises(NoQueue):
        await store.put_message(rec.recipient_id, mid(), b"x", NOW, LIMITS)
    assert await snapshot(store, rec) == before


@pytest.mark.parametrize("bad", ["not bytes", b"", b"x" * 65, 12345])
async def test_malformed_ids_are_type_or_value_errors(store: Store, bad: object) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    before = await snapshot(store, rec)
    with pytest.raises((TypeError, ValueError)):
        await store.put_message(bad, mid(), b"x", NOW, LIMITS)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        await store.ack(rec.recipient_id, bad)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        await store.create_queue(QueueRecord(bad, os.urandom(16), b"k"), NOW)  # type: ignore[arg-type]
    assert await snapshot(store, rec) == before


# ---------------------------------------------------------------------------- hints


async def test_put_hints_watchers_of_that_queue_only(store: Store, hints: Hints) -> None:
    watched, quiet = new_record(), new_record()
    await store.create_queue(watched, NOW)
    await store.create_queue(quiet, NOW)
    await store.watch(watched.recipient_id)
    await store.put_message(quiet.sender_id, mid(), b"x", NOW, LIMITS)
    await store.put_message(watched.sender_id, mid(), b"x", NOW, LIMITS)
    await hints.wait_for(watched.recipient_id)
    await asyncio.sleep(0.2)
    assert hints.count(quiet.recipient_id) == 0


async def test_no_hints_after_unwatch(store: Store, hints: Hints) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    await store.watch(rec.recipient_id)
    await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await hints.wait_for(rec.recipient_id)
    await store.unwatch(rec.recipient_id)
    await asyncio.sleep(0.1)
    hints.clear()
    await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await asyncio.sleep(0.3)
    assert hints.count(rec.recipient_id) == 0


async def test_watches_are_counted(store: Store, hints: Hints) -> None:
    """Overlapping subscribe/unsubscribe must not silence a queue that is still watched."""
    rec = new_record()
    await store.create_queue(rec, NOW)
    await store.watch(rec.recipient_id)
    await store.watch(rec.recipient_id)
    await store.unwatch(rec.recipient_id)
    await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await hints.wait_for(rec.recipient_id)
    await store.unwatch(rec.recipient_id)
    await store.unwatch(rec.recipient_id)  # one too many: harmless
    await store.watch(rec.recipient_id)
    await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    await hints.wait_for(rec.recipient_id, n=2)


async def test_refused_put_sends_no_hint(store: Store, hints: Hints) -> None:
    rec = new_record()
    await store.create_queue(rec, NOW)
    await store.watch(rec.recipient_id)
    with pytest.raises(QuotaExceeded):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, Limits(max_messages=0))
    await asyncio.sleep(0.3)
    assert hints.count(rec.recipient_id) == 0


# ---------------------------------------------------------------------------- stats, lifecycle


async def test_stats_are_aggregate_counts(store: Store) -> None:
    assert await store.stats() == {"queues": 0, "messages": 0, "bytes": 0}
    a, b = new_record(), new_record()
    await store.create_queue(a, NOW)
    await store.create_queue(b, NOW)
    ids = await fill(store, a, 3)  # b"body 0" .. b"body 2": 6 bytes each
    await fill(store, b, 1)
    assert await store.stats() == {"queues": 2, "messages": 4, "bytes": 24}
    await store.ack(a.recipient_id, ids[0])
    assert await store.stats() == {"queues": 2, "messages": 3, "bytes": 18}
    await store.delete_queue(a.recipient_id)
    assert await store.stats() == {"queues": 1, "messages": 1, "bytes": 6}


# The memory store is one process's dicts by design, so only the persistent backends apply.
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_second_store_sees_the_same_queue_space(
    make_store: StoreFactory, backend: str
) -> None:
    """Reopening (SQLite) or a second process (Redis) sees what the first one stored."""
    first = await make_store()
    rec = new_record(sender_key=os.urandom(32))
    await first.create_queue(rec, NOW)
    ids = [mid() for _ in range(3)]
    for m in ids:
        await first.put_message(rec.sender_id, m, b"kept", NOW, LIMITS, rec.sender_key)
    await first.ack(rec.recipient_id, ids[0])
    await first.close()
    second = await make_store()
    assert await second.queue_by_sender(rec.sender_id) == rec
    got = await second.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
    assert [m.msg_id for m in got] == ids[1:]
    ref = await second.put_message(rec.sender_id, mid(), b"more", NOW, LIMITS, rec.sender_key)
    assert ref.seq == 4


async def test_closed_store_refuses_calls(make_store: StoreFactory) -> None:
    store = await make_store()
    rec = new_record()
    await store.create_queue(rec, NOW)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.put_message(rec.sender_id, mid(), b"x", NOW, LIMITS)
    with pytest.raises(StoreUnavailable):
        await store.pending(rec.recipient_id, 0, 10, NOW, LIMITS)
