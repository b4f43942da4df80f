"""The relay protocol core, driven directly: bytes and outcomes in, frames and effects out.

No sockets, no store: each test plays the adapter, feeding the core the outcomes a store would
produce (or the faults it would raise), and checks what the core says and does.
"""

from __future__ import annotations

import itertools

import pytest

from kith.crypto.signing import SigningKey
from kith.errors import StoreUnavailable
from kith.protocol import relay as p
from kith.relay import core
from kith.relay.store.base import (
    AlreadySecured,
    Limits,
    NoQueue,
    NotAuthorized,
    QueueRecord,
    QuotaExceeded,
    StoredMessage,
    StoredRef,
)

BLOCK = 512
CHALLENGE = bytes(range(32))
NOW = 1_700_000_000.0


def counter_rng() -> core.RandomBytes:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make(
    window: int = 4, burst: int = 1000, rate: float = 1000.0, signed_burst: int = 1000
) -> core.RelayConnection:
    cfg = core.RelayConfig(
        block_size=BLOCK,
        window=window,
        rate_per_second=rate,
        rate_burst=burst,
        signed_per_second=1.0,
        signed_burst=signed_burst,
    )
    return core.RelayConnection(cfg, CHALLENGE, counter_rng(), NOW)


def replies(outputs: list[core.Output]) -> list[p.Reply]:
    return [p.decode_reply(o.data, BLOCK) for o in outputs if isinstance(o, core.Reply)]


def effects(outputs: list[core.Output]) -> list[core.Output]:
    return [o for o in outputs if not isinstance(o, core.Reply)]


def sub_frame(key: SigningKey, rid: bytes, corr: int = 7, challenge: bytes = CHALLENGE) -> bytes:
    sig = key.sign(p.auth_payload(p.FrameType.SUB, challenge, rid))
    return p.encode(p.Sub(corr, rid, sig))


def subscribed(
    conn: core.RelayConnection, key: SigningKey, rid: bytes, sid: bytes = b"S" * 16
) -> core.Fetch:
    [load] = conn.receive(sub_frame(key, rid), NOW)
    assert isinstance(load, core.LoadQueue)
    out = conn.complete(load, QueueRecord(rid, sid, key.public_key), NOW)
    fetch = out[-1]
    assert isinstance(fetch, core.Fetch)
    return fetch


def msg(seq: int) -> StoredMessage:
    return StoredMessage(seq, seq.to_bytes(16, "big"), 60, bytes([seq % 256]) * BLOCK)


def test_hello_announces_parameters() -> None:
    hello = p.decode_reply(make().hello())
    assert hello == p.Hello(1, 1, CHALLENGE, BLOCK, 4)


def test_ping() -> None:
    assert replies(make().receive(p.encode(p.Ping(99)), NOW)) == [p.Pong(99)]


@pytest.mark.parametrize(
    ("data", "code", "corr"),
    [
        (b"", p.ErrorCode.MALFORMED, 0),
        (b"\x01\x01\x00", p.ErrorCode.MALFORMED, 0),
        (b"\x02\x01\x00\x00\x00\x05", p.ErrorCode.VERSION, 5),
        (b"\x01\x7f\x00\x00\x00\x06", p.ErrorCode.UNKNOWN_COMMAND, 6),
        (b"\x01\x81\x00\x00\x00\x06", p.ErrorCode.UNKNOWN_COMMAND, 6),
        (b"\x01\x02\x00\x00\x00\x08" + b"k" * 31, p.ErrorCode.MALFORMED, 8),
        (b"\x01\x01\x00\x00\x00\x09" + b"x", p.ErrorCode.MALFORMED, 9),
        (b"\x01\x06\x00\x00\x00\x0a" + b"s" * 16 + b"b" * (BLOCK - 1), p.ErrorCode.BLOCK_SIZE, 10),
        (b"\x01\x06\x00\x00\x00\x0b" + b"s" * 16 + b"b" * (BLOCK + 1), p.ErrorCode.TOO_LARGE, 11),
    ],
)
def test_bad_frames_get_typed_errors_and_no_effects(
    data: bytes, code: p.ErrorCode, corr: int
) -> None:
    conn = make()
    out = conn.receive(data, NOW)
    assert replies(out) == [p.Err(corr, code)]
    assert effects(out) == []
    # The connection stays usable.
    assert replies(conn.receive(p.encode(p.Ping(1)), NOW)) == [p.Pong(1)]


def test_text_frame_is_malformed() -> None:
    assert replies(make().receive("hello", NOW)) == [p.Err(0, p.ErrorCode.MALFORMED)]


def test_new_creates_queue_with_unrelated_random_ids() -> None:
    conn = make()
    key = SigningKey.generate()
    [create] = conn.receive(p.encode(p.New(3, key.public_key)), NOW)
    assert isinstance(create, core.CreateQueue)
    rec = create.record
    assert rec.recipient_key == key.public_key and rec.sender_key is None
    assert rec.recipient_id != rec.sender_id and len(rec.recipient_id) == 16
    assert replies(conn.complete(create, None, NOW)) == [p.Ids(3, rec.recipient_id, rec.sender_id)]


def test_subscribe_verifies_signature_then_fetches_window() -> None:
    conn = make(window=4)
    key = SigningKey.generate()
    rid = b"R" * 16
    [load] = conn.receive(sub_frame(key, rid), NOW)
    out = conn.complete(load, QueueRecord(rid, b"S" * 16, key.public_key), NOW)
    assert out[0] == core.Subscribe(rid)
    assert replies(out) == [p.Ok(7)]
    assert out[-1] == core.Fetch(rid, 0, 4, 1_699_999_980, conn.config.limits)


@pytest.mark.parametrize("attack", ["other_key", "other_challenge", "no_queue", "other_rid"])
def test_subscribe_refused_without_valid_proof(attack: str) -> None:
    conn = make()
    owner, thief = SigningKey.generate(), SigningKey.generate()
    rid = b"R" * 16
    signer = thief if attack == "other_key" else owner
    challenge = bytes(32) if attack == "other_challenge" else CHALLENGE
    frame = sub_frame(signer, b"Q" * 16 if attack == "other_rid" else rid, challenge=challenge)
    if attack == "other_rid":  # a signature for another queue, pasted onto this one
        frame = frame[:6] + rid + frame[22:]
    [load] = conn.receive(frame, NOW)
    record = None if attack == "no_queue" else QueueRecord(rid, b"S" * 16, owner.public_key)
    out = conn.complete(load, record, NOW)
    assert replies(out) == [p.Err(7, p.ErrorCode.AUTH)]
    assert effects(out) == []
    assert conn.subscriptions() == []


def test_delivery_window_ack_and_refill() -> None:
    conn = make(window=2)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    out = conn.complete(fetch, [msg(1), msg(2)], NOW)
    delivered = [r.msg_id for r in replies(out) if isinstance(r, p.Msg)]
    assert delivered == [msg(1).msg_id, msg(2).msg_id]
    assert effects(out) == []  # window full: no fetch until an ack
    # ACK for a message never delivered here: refused, no store effect.
    out = conn.receive(p.encode(p.Ack(5, rid, b"\x09" * 16)), NOW)
    assert replies(out) == [p.Err(5, p.ErrorCode.NO_MESSAGE)] and effects(out) == []
    [ack] = conn.receive(p.encode(p.Ack(6, rid, msg(1).msg_id)), NOW)
    assert ack == core.AckMessage(6, rid, msg(1).msg_id)
    out = conn.complete(ack, True, NOW)
    assert replies(out) == [p.Ok(6)]
    refill = next(e for e in effects(out) if isinstance(e, core.Fetch))
    assert refill.after_seq == 2


def test_a_full_fetch_is_followed_by_another_even_if_acks_freed_room_meanwhile() -> None:
    conn = make(window=4)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1), msg(2), msg(3), msg(4)], NOW)
    [ack1] = conn.receive(p.encode(p.Ack(1, rid, msg(1).msg_id)), NOW)
    small = effects(conn.complete(ack1, True, NOW))[-1]
    assert isinstance(small, core.Fetch) and small.limit == 1
    for i in (2, 3):  # more room frees up while that fetch is outstanding
        [ack] = conn.receive(p.encode(p.Ack(i, rid, msg(i).msg_id)), NOW)
        assert effects(conn.complete(ack, True, NOW)) == []
    # The fetch asked for 1 and got 1: there may be more, so fetch again.
    nxt = effects(conn.complete(small, [msg(5)], NOW))
    assert nxt and isinstance(nxt[-1], core.Fetch) and nxt[-1].after_seq == 5


def test_a_quiet_ack_is_answered_only_when_it_fails() -> None:
    conn = make()
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1), msg(2), msg(3)], NOW)
    [ack] = conn.receive(p.encode(p.Ack(7, rid, msg(1).msg_id, quiet=True)), NOW)
    assert ack == core.AckMessage(7, rid, msg(1).msg_id, quiet=True)
    assert replies(conn.complete(ack, True, NOW)) == []  # done: nothing to say
    # The store no longer had it: the client hears so, by corr_id.
    [ack] = conn.receive(p.encode(p.Ack(8, rid, msg(2).msg_id, quiet=True)), NOW)
    assert replies(conn.complete(ack, False, NOW)) == [p.Err(8, p.ErrorCode.NO_MESSAGE)]
    # The store was down: the same.
    [ack] = conn.receive(p.encode(p.Ack(9, rid, msg(3).msg_id, quiet=True)), NOW)
    out = conn.complete(ack, StoreUnavailable("down"), NOW)
    assert replies(out) == [p.Err(9, p.ErrorCode.STORE_UNAVAILABLE)]
    # Never delivered here: refused at once, as a plain ACK is.
    out = conn.receive(p.encode(p.Ack(10, rid, b"\x09" * 16, quiet=True)), NOW)
    assert replies(out) == [p.Err(10, p.ErrorCode.NO_MESSAGE)] and effects(out) == []


def test_a_failed_acknowledgement_gives_its_window_slot_back() -> None:
    """A QACK that fails is answered with ERR, which a client that does not wait for the
    answer drops. Had the message kept its slot, `window` such failures would stop delivery
    on the queue for the connection's lifetime (found by review). The message stays stored
    and comes again on the next SUB; the slot is free at once and waiting messages follow."""
    conn = make(window=2)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1), msg(2)], NOW)  # window full
    [ack] = conn.receive(p.encode(p.Ack(3, rid, msg(1).msg_id, quiet=True)), NOW)
    out = conn.complete(ack, StoreUnavailable("down"), NOW)
    assert replies(out) == [p.Err(3, p.ErrorCode.STORE_UNAVAILABLE)]
    [refill] = effects(out)
    assert isinstance(refill, core.Fetch) and refill.after_seq == 2 and refill.limit == 1


def test_a_rate_limited_acknowledgement_gives_its_window_slot_back() -> None:
    conn = make(window=2, burst=4, rate=0.001)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)  # one frame of the burst
    conn.complete(fetch, [msg(1), msg(2)], NOW)
    for corr in (1, 2, 3):  # use up the rest of the burst
        conn.receive(p.encode(p.Ping(corr)), NOW)
    out = conn.receive(p.encode(p.Ack(9, rid, msg(1).msg_id, quiet=True)), NOW)
    assert replies(out) == [p.Err(9, p.ErrorCode.RATE_LIMITED)]
    [refill] = effects(out)  # not run (nothing deleted), but the slot is free again
    assert isinstance(refill, core.Fetch) and refill.limit == 1
    # A refused ACK that names nothing delivered here frees nothing.
    out = conn.receive(p.encode(p.Ack(10, rid, b"\x09" * 16)), NOW)
    assert replies(out) == [p.Err(10, p.ErrorCode.RATE_LIMITED)] and effects(out) == []


def test_ack_requires_subscription_on_this_connection() -> None:
    conn = make()
    out = conn.receive(p.encode(p.Ack(1, b"R" * 16, b"m" * 16)), NOW)
    assert replies(out) == [p.Err(1, p.ErrorCode.NO_MESSAGE)] and effects(out) == []


def test_notify_during_fetch_fetches_again_afterwards() -> None:
    conn = make(window=8)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    assert conn.notify(rid, NOW) == []  # a fetch is outstanding: remember, don't duplicate
    out = conn.complete(fetch, [msg(1)], NOW)
    again = [e for e in effects(out) if isinstance(e, core.Fetch)]
    assert again and again[0].after_seq == 1
    assert conn.notify(b"X" * 16, NOW) == []  # not subscribed here: ignored


def test_hint_for_a_message_already_pushed_is_dropped() -> None:
    conn = make(window=8)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1)], NOW)
    assert conn.notify(rid, NOW, seq=1) == []  # already delivered: no store read
    [again] = conn.notify(rid, NOW, seq=2)
    assert isinstance(again, core.Fetch) and again.after_seq == 1


def test_direct_delivery_only_when_nothing_can_be_missed() -> None:
    conn = make(window=8)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1)], NOW)
    # seq 3 while 2 is unseen (stored by another process): must not skip it, but fetch
    # from after 1 instead, which picks up 2 and 3.
    [f2] = conn.deliver_stored(StoredRef(rid, 3, 60), b"x" * BLOCK, b"3" * 16, NOW)
    assert isinstance(f2, core.Fetch) and f2.after_seq == 1
    assert conn.notify(rid, NOW) == []  # already fetching
    [f3] = conn.complete(f2, [msg(2), msg(3)], NOW)[-1:]  # the hint owed one more fetch
    assert isinstance(f3, core.Fetch) and f3.after_seq == 3
    assert conn.complete(f3, [], NOW) == []
    out = conn.deliver_stored(StoredRef(rid, 4, 60), b"y" * BLOCK, b"4" * 16, NOW)
    [pushed] = replies(out)
    assert isinstance(pushed, p.Msg) and pushed.msg_id == b"4" * 16


def test_send_carries_proven_sender_key_only_after_sauth() -> None:
    conn = make()
    skey = SigningKey.generate()
    sid = b"S" * 16
    body = b"\x00" * BLOCK
    [store] = conn.receive(p.encode(p.Send(1, sid, body)), NOW)
    assert isinstance(store, core.StoreMessage) and store.sender_key is None
    sig = skey.sign(p.auth_payload(p.FrameType.SAUTH, CHALLENGE, sid))
    [load] = conn.receive(p.encode(p.SAuth(2, sid, sig)), NOW)
    rec = QueueRecord(b"R" * 16, sid, b"k" * 32, skey.public_key)
    assert replies(conn.complete(load, rec, NOW)) == [p.Ok(2)]
    [store] = conn.receive(p.encode(p.Send(3, sid, body)), NOW)
    assert isinstance(store, core.StoreMessage) and store.sender_key == skey.public_key
    assert store.now % core.TIME_GRANULARITY == 0  # coarse time only
    ref = StoredRef(b"R" * 16, 1, store.now)
    assert replies(conn.complete(store, ref, NOW)) == [p.Ok(3)]


def test_sauth_with_wrong_key_is_refused_and_proves_nothing() -> None:
    conn = make()
    real, fake = SigningKey.generate(), SigningKey.generate()
    sid = b"S" * 16
    sig = fake.sign(p.auth_payload(p.FrameType.SAUTH, CHALLENGE, sid))
    [load] = conn.receive(p.encode(p.SAuth(2, sid, sig)), NOW)
    out = conn.complete(load, QueueRecord(b"R" * 16, sid, b"k" * 32, real.public_key), NOW)
    assert replies(out) == [p.Err(2, p.ErrorCode.AUTH)]
    [store] = conn.receive(p.encode(p.Send(3, sid, b"\x00" * BLOCK)), NOW)
    assert isinstance(store, core.StoreMessage) and store.sender_key is None


def test_key_signature_binds_the_sender_key() -> None:
    conn = make()
    owner = SigningKey.generate()
    rid = b"R" * 16
    good, evil = b"g" * 32, b"e" * 32
    sig = owner.sign(p.auth_payload(p.FrameType.KEY, CHALLENGE, rid, good))
    [load] = conn.receive(p.encode(p.Key(4, rid, evil, sig)), NOW)
    rec = QueueRecord(rid, b"S" * 16, owner.public_key)
    assert replies(conn.complete(load, rec, NOW)) == [p.Err(4, p.ErrorCode.AUTH)]
    [load] = conn.receive(p.encode(p.Key(5, rid, good, sig)), NOW)
    [secure] = conn.complete(load, rec, NOW)
    assert secure == core.SecureQueue(5, rid, good)
    assert replies(conn.complete(secure, None, NOW)) == [p.Ok(5)]


def test_a_sub_signature_is_not_a_del_signature() -> None:
    conn = make()
    owner = SigningKey.generate()
    rid = b"R" * 16
    sub_sig = owner.sign(p.auth_payload(p.FrameType.SUB, CHALLENGE, rid))
    [load] = conn.receive(p.encode(p.Del(4, rid, sub_sig)), NOW)
    out = conn.complete(load, QueueRecord(rid, b"S" * 16, owner.public_key), NOW)
    assert replies(out) == [p.Err(4, p.ErrorCode.AUTH)] and effects(out) == []


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (StoreUnavailable("down"), p.ErrorCode.STORE_UNAVAILABLE),
        (QuotaExceeded(), p.ErrorCode.QUOTA),
        (NoQueue(), p.ErrorCode.AUTH),
        (NotAuthorized(), p.ErrorCode.AUTH),
        (AlreadySecured(), p.ErrorCode.AUTH),
        (RuntimeError("bug"), p.ErrorCode.INTERNAL),
    ],
)
def test_store_faults_become_typed_errors(exc: Exception, code: p.ErrorCode) -> None:
    conn = make()
    [store] = conn.receive(p.encode(p.Send(9, b"S" * 16, b"\x00" * BLOCK)), NOW)
    assert replies(conn.complete(store, exc, NOW)) == [p.Err(9, code)]


def test_failed_fetch_is_retried_on_next_hint() -> None:
    conn = make()
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    assert conn.complete(fetch, StoreUnavailable("down"), NOW) == []
    [again] = conn.notify(rid, NOW)
    assert isinstance(again, core.Fetch) and again.after_seq == 0


def test_rate_limit_refuses_without_running_the_command() -> None:
    conn = make(burst=3, rate=1.0)
    frame = p.encode(p.Send(1, b"S" * 16, b"\x00" * BLOCK))
    for _ in range(3):
        assert effects(conn.receive(frame, NOW))
    out = conn.receive(frame, NOW)
    assert replies(out) == [p.Err(1, p.ErrorCode.RATE_LIMITED)] and effects(out) == []
    assert effects(conn.receive(frame, NOW + 1.5))  # tokens refill with time


def test_takeover_ends_old_subscription_and_close_releases_all() -> None:
    conn = make()
    key = SigningKey.generate()
    r1, r2 = b"1" * 16, b"2" * 16
    subscribed(conn, key, r1)
    subscribed(conn, key, r2)
    assert replies(conn.taken_over(r1)) == [p.End(r1)]
    assert conn.subscriptions() == [r2]
    assert conn.close() == [core.Unsubscribe(r2)]


def test_resubscribe_restarts_delivery_and_drops_stale_fetch() -> None:
    conn = make(window=4)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1)], NOW)
    [load] = conn.receive(sub_frame(key, rid, corr=8), NOW)
    out = conn.complete(load, QueueRecord(rid, b"S" * 16, key.public_key), NOW)
    refetch = out[-1]
    assert isinstance(refetch, core.Fetch) and refetch.after_seq == 0
    # msg 1 is delivered again on the new subscription (it was never acked).
    assert [r for r in replies(conn.complete(refetch, [msg(1)], NOW)) if isinstance(r, p.Msg)]


def test_delete_drops_subscription() -> None:
    conn = make()
    key = SigningKey.generate()
    rid = b"R" * 16
    subscribed(conn, key, rid)
    sig = key.sign(p.auth_payload(p.FrameType.DEL, CHALLENGE, rid))
    [load] = conn.receive(p.encode(p.Del(3, rid, sig)), NOW)
    out = conn.complete(load, QueueRecord(rid, b"S" * 16, key.public_key), NOW)
    assert out == [core.Unsubscribe(rid), core.DeleteQueue(3, rid)]
    assert replies(conn.complete(out[1], None, NOW)) == [p.Ok(3)]
    assert conn.subscriptions() == []


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="block_size"):
        core.RelayConfig(block_size=10)
    with pytest.raises(ValueError, match="window"):
        core.RelayConfig(window=0)
    assert core.RelayConfig().limits == Limits()


def test_signed_commands_have_their_own_smaller_budget() -> None:
    conn = make(signed_burst=3)
    key = SigningKey.generate()
    for i in range(3):
        assert effects(conn.receive(sub_frame(key, bytes([i]) * 16, corr=i), NOW))
    out = conn.receive(sub_frame(key, b"z" * 16, corr=9), NOW)
    assert replies(out) == [p.Err(9, p.ErrorCode.RATE_LIMITED)] and effects(out) == []
    # Creating queues draws on the same budget: no filling the disk at frame rate.
    out = conn.receive(p.encode(p.New(10, key.public_key)), NOW)
    assert replies(out) == [p.Err(10, p.ErrorCode.RATE_LIMITED)] and effects(out) == []
    # Unsigned commands are not affected, and the budget refills with time.
    assert replies(conn.receive(p.encode(p.Ping(1)), NOW)) == [p.Pong(1)]
    assert effects(conn.receive(sub_frame(key, b"z" * 16), NOW + 1.5))


def test_resubscribe_while_a_fetch_is_outstanding_redelivers_everything() -> None:
    conn = make(window=8)
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    conn.complete(fetch, [msg(1), msg(2)], NOW)
    [ack] = conn.receive(p.encode(p.Ack(1, rid, msg(1).msg_id)), NOW)
    conn.complete(ack, True, NOW)
    [stale] = conn.notify(rid, NOW)  # a new message: a fetch after seq 2, outstanding
    assert isinstance(stale, core.Fetch) and stale.after_seq == 2
    # The client subscribes again before that fetch returns.
    [load] = conn.receive(sub_frame(key, rid, corr=8), NOW)
    out = conn.complete(load, QueueRecord(rid, b"S" * 16, key.public_key), NOW)
    assert replies(out) == [p.Ok(8)] and effects(out) == []  # still one fetch in flight
    # The stale result (message 3) is dropped; a new fetch starts from the beginning.
    out = conn.complete(stale, [msg(3)], NOW)
    assert not [r for r in replies(out) if isinstance(r, p.Msg)]
    [fresh] = effects(out)
    assert isinstance(fresh, core.Fetch) and fresh.after_seq == 0
    pushed = replies(conn.complete(fresh, [msg(2), msg(3)], NOW))
    assert [r.msg_id for r in pushed if isinstance(r, p.Msg)] == [msg(2).msg_id, msg(3).msg_id]
    # ...and their ACKs are accepted.
    [ack2] = conn.receive(p.encode(p.Ack(2, rid, msg(2).msg_id)), NOW)
    assert isinstance(ack2, core.AckMessage)


def test_a_fetch_for_a_deleted_queue_ends_the_subscription() -> None:
    conn = make()
    key = SigningKey.generate()
    rid = b"R" * 16
    fetch = subscribed(conn, key, rid)
    out = conn.complete(fetch, NoQueue(), NOW)
    assert out[0] == core.Unsubscribe(rid)
    assert replies(out) == [p.End(rid)]
    assert conn.subscriptions() == []
    assert conn.notify(rid, NOW) == []  # no more store reads for it
