"""Safety numbers and contact verification: both sides agree, a man in the middle is visible,
a key change blocks sending until acknowledged, and the state survives a round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto.interfaces import IdentityKeys
from kith.crypto.olm import CRYPTO
from kith.errors import LocalProtocolError
from kith.protocol import qr
from kith.protocol import safety as sf
from tests.unit.protocol.pairwise_support import handshake

key32 = st.binary(min_size=32, max_size=32)
identities = st.builds(IdentityKeys, key32, key32)


def test_both_sides_see_the_same_number() -> None:
    pair = handshake()
    a = sf.SafetyNumber.compute(pair.alice.our_keys, pair.alice.their_keys, CRYPTO)
    b = sf.SafetyNumber.compute(pair.bob.our_keys, pair.bob.their_keys, CRYPTO)
    assert a.digits == b.digits
    assert len(a.digits) == 60 and a.digits.isdigit()
    assert len(a.groups) == 12 and all(len(g) == 5 for g in a.groups)
    lines = a.display().split("\n")
    assert len(lines) == 3 and all(len(line.split()) == 4 for line in lines)
    assert a.matches_typed(b.display()) and a.matches_typed(b.digits)
    wrong = b.digits[:-1] + str((int(b.digits[-1]) + 1) % 10)
    assert not a.matches_typed(wrong)
    assert not a.matches_typed("")


def test_digits_follow_the_documented_derivation() -> None:
    pair = handshake()
    digest = CRYPTO.safety_digest(pair.alice.our_keys, pair.alice.their_keys)
    n = sf.SafetyNumber.compute(pair.alice.our_keys, pair.alice.their_keys, CRYPTO)
    for i, group in enumerate(n.groups):
        assert int(group) == int.from_bytes(digest[5 * i : 5 * i + 5], "big") % 100000


def test_a_man_in_the_middle_shows_different_numbers() -> None:
    """Mallory swapped Alice's invitation for his own and relays between two channels: Alice
    talks to Mallory (channel 1), Bob to Mallory (channel 2). Their numbers differ."""
    alice_mallory, mallory_bob = handshake(seed=20), handshake(seed=21)
    alice_view = sf.SafetyNumber.compute(
        alice_mallory.alice.our_keys, alice_mallory.alice.their_keys, CRYPTO
    )
    bob_view = sf.SafetyNumber.compute(mallory_bob.bob.our_keys, mallory_bob.bob.their_keys, CRYPTO)
    assert alice_view.digits != bob_view.digits
    assert not alice_view.matches_scanned(bob_view.qr_payload())
    assert not bob_view.matches_scanned(alice_view.qr_payload())


def test_scanning_checks_both_directions() -> None:
    pair = handshake()
    alice = sf.SafetyNumber.compute(pair.alice.our_keys, pair.alice.their_keys, CRYPTO)
    bob = sf.SafetyNumber.compute(pair.bob.our_keys, pair.bob.their_keys, CRYPTO)
    assert bob.matches_scanned(alice.qr_payload())
    assert alice.matches_scanned(bob.qr_payload())
    assert not alice.matches_scanned(alice.qr_payload())  # one's own code is not the peer's
    # A code that has Bob's keys right but a wrong view of Alice's keys is refused: the
    # displayer (Bob, under attack) sees someone else as Alice.
    other = handshake(seed=22).alice.our_keys
    skewed = sf.SafetyNumber.compute(pair.bob.our_keys, other, CRYPTO)
    assert not alice.matches_scanned(skewed.qr_payload())
    code = qr.make(alice.qr_payload())
    assert code.mode == "alphanumeric"


@settings(max_examples=100)
@given(identities, identities)
def test_qr_payload_round_trip(ours: IdentityKeys, theirs: IdentityKeys) -> None:
    n = sf.SafetyNumber.compute(ours, theirs, CRYPTO)
    assert sf.parse_qr_payload(n.qr_payload()) == (ours, theirs)
    assert sf.parse_qr_payload(" " + n.qr_payload().lower()) == (ours, theirs)


@pytest.mark.parametrize(
    "payload",
    ["", "KITH:VERIFY/", "KITH:INVITE/AAAA", "KITH:VERIFY/1", "KITH:VERIFY/AB=", "x" * 600],
)
def test_malformed_codes_are_typed_errors(payload: str) -> None:
    with pytest.raises(sf.SafetyCodeError):
        sf.parse_qr_payload(payload)


def test_wrong_version_code() -> None:
    import base64

    raw = b"\x02" + bytes(128)
    with pytest.raises(sf.SafetyCodeError, match="version"):
        sf.parse_qr_payload("KITH:VERIFY/" + base64.b32encode(raw).decode().rstrip("="))


# --------------------------------------------------------------------------- verification state


def _status(state: sf.ContactVerification) -> sf.Status:
    """Read through a call, so the type checker does not pin the property between steps."""
    return state.status


def _keys(seed: int) -> IdentityKeys:
    return IdentityKeys(bytes([seed]) * 32, bytes([seed + 1]) * 32)


def test_verification_lifecycle() -> None:
    me, them = _keys(1), _keys(3)
    state = sf.ContactVerification(them)
    assert _status(state) is sf.Status.UNVERIFIED
    state.require_send_allowed()
    number = sf.SafetyNumber.compute(me, them, CRYPTO)
    assert not state.verify_typed(number, "12345")
    assert _status(state) is sf.Status.UNVERIFIED
    assert state.verify_typed(number, number.display())
    assert state.verified
    assert not state.observe(them)  # same keys: nothing happens
    assert state.verified


def test_a_changed_key_is_loud_and_blocks_sending() -> None:
    me, them, new = _keys(1), _keys(3), _keys(5)
    state = sf.ContactVerification(them)
    state.confirm_compared(sf.SafetyNumber.compute(me, them, CRYPTO))
    assert state.observe(new)
    assert _status(state) is sf.Status.CHANGED and not state.verified
    assert state.previous_keys == them and state.their_keys == new
    with pytest.raises(sf.KeyChangedError):
        state.require_send_allowed()
    # Verifying the new keys is not a way around acknowledging the change.
    with pytest.raises(sf.KeyChangedError):
        state.confirm_compared(sf.SafetyNumber.compute(me, new, CRYPTO))
    assert _status(state) is sf.Status.CHANGED
    # A second change before acknowledging keeps the original "before" keys.
    assert state.observe(_keys(7))
    assert state.previous_keys == them
    state.acknowledge_change()
    state.require_send_allowed()
    assert _status(state) is sf.Status.UNVERIFIED
    assert sf.ContactVerification.from_bytes(state.to_bytes()).previous_keys is None
    with pytest.raises(LocalProtocolError):
        state.acknowledge_change()
    with pytest.raises(LocalProtocolError):  # a number for other keys
        state.confirm_compared(sf.SafetyNumber.compute(me, new, CRYPTO))
    state.confirm_compared(sf.SafetyNumber.compute(me, _keys(7), CRYPTO))
    assert _status(state) is sf.Status.VERIFIED
    state.unverify()
    assert _status(state) is sf.Status.UNVERIFIED


def test_unverified_contacts_changing_keys_also_block() -> None:
    state = sf.ContactVerification(_keys(1))
    assert state.observe(_keys(3))
    with pytest.raises(sf.KeyChangedError):
        state.require_send_allowed()


@settings(max_examples=200)
@given(
    identities,
    st.lists(st.sampled_from(["observe", "ack", "verify", "unverify"]), max_size=8),
    identities,
)
def test_state_round_trip(first: IdentityKeys, steps: list[str], other: IdentityKeys) -> None:
    state = sf.ContactVerification(first)
    for step in steps:
        try:
            if step == "observe":
                state.observe(other if state.their_keys == first else first)
            elif step == "ack":
                state.acknowledge_change()
            elif step == "verify":
                state.confirm_compared(sf.SafetyNumber.compute(other, state.their_keys, CRYPTO))
            else:
                state.unverify()
        except LocalProtocolError:
            pass
        restored = sf.ContactVerification.from_bytes(state.to_bytes())
        assert restored.to_bytes() == state.to_bytes()
        assert restored.status is state.status
        assert restored.their_keys == state.their_keys
        assert restored.previous_keys == state.previous_keys


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00" + bytes(64),
        b"\x01\x09" + bytes(64),
        b"\x01\x02" + bytes(64),
        b"\x01\x00" + bytes(65),
    ],
)
def test_malformed_state_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(sf.VerificationStateError):
        sf.ContactVerification.from_bytes(data)
