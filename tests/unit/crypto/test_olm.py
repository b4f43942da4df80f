"""The Olm facade: one opaque error, bytes in and out, failures change nothing, and the size
arithmetic the padding relies on matches what vodozemac really emits."""

from __future__ import annotations

import pytest
import vodozemac as vz
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto import signing
from kith.crypto.interfaces import (
    IdentityKeys,
    OlmKind,
    max_olm_plaintext,
    olm_message_len,
)
from kith.crypto.olm import CRYPTO, Account, Session
from kith.errors import DecryptError

KEY = bytes(range(32))
OTHER_KEY = bytes(32)


def _pair() -> tuple[Account, Account, Session, Session]:
    """alice -> bob outbound session, and bob's inbound one (after one pre-key message)."""
    alice, bob = Account.generate(), Account.generate()
    otk = bob.new_one_time_key()
    out = alice.create_outbound(bob.identity_keys.curve25519, otk)
    kind, ct = out.encrypt(b"first")
    assert kind is OlmKind.PREKEY
    bob, inbound, plaintext = bob.create_inbound(alice.identity_keys.curve25519, ct)
    assert plaintext == b"first"
    return alice, bob, out, inbound


def test_each_account_is_a_fresh_unrelated_identity() -> None:
    keys = {Account.generate().identity_keys for _ in range(5)}
    assert len(keys) == 5
    for k in keys:
        assert len(k.ed25519) == 32 and len(k.curve25519) == 32
        assert k.ed25519 != k.curve25519


def test_signatures_are_plain_ed25519() -> None:
    """The protocol verifies vodozemac's signatures with the cryptography-backed recipe."""
    account = Account.generate()
    sig = account.sign(b"message")
    assert len(sig) == 64
    signing.verify(account.identity_keys.ed25519, sig, b"message")
    CRYPTO.verify(account.identity_keys.ed25519, sig, b"message")
    with pytest.raises(DecryptError):
        CRYPTO.verify(account.identity_keys.ed25519, sig, b"messagE")
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(DecryptError):
        CRYPTO.verify(account.identity_keys.ed25519, forged, b"message")
    with pytest.raises(DecryptError):
        CRYPTO.verify(Account.generate().identity_keys.ed25519, sig, b"message")


def test_one_time_keys_are_distinct_and_single_use() -> None:
    alice, bob = Account.generate(), Account.generate()
    otks = {bob.new_one_time_key() for _ in range(3)}
    assert len(otks) == 3
    otk = otks.pop()
    out = alice.create_outbound(bob.identity_keys.curve25519, otk)
    _, ct = out.encrypt(b"hello")
    used, _, _ = bob.create_inbound(alice.identity_keys.curve25519, ct)
    # The same pre-key message again: the one-time key is gone from the returned account...
    with pytest.raises(DecryptError):
        used.create_inbound(alice.identity_keys.curve25519, ct)
    # ...while the original account was never changed (the caller commits by adopting).
    bob.create_inbound(alice.identity_keys.curve25519, ct)


def test_sessions_round_trip_both_ways() -> None:
    _, _, out, inbound = _pair()
    for i in range(5):
        kind, ct = inbound.encrypt(b"reply %d" % i)
        assert kind is OlmKind.NORMAL
        assert out.decrypt(kind, ct) == b"reply %d" % i
        kind, ct = out.encrypt(b"again %d" % i)
        assert kind is OlmKind.NORMAL  # pre-key messages stop once a reply arrived
        assert inbound.decrypt(kind, ct) == b"again %d" % i


@pytest.mark.parametrize("replied", [False, True])
def test_failed_decrypt_raises_opaque_error_and_changes_nothing(replied: bool) -> None:
    """Every byte of a pre-key message (no reply yet) and of a normal one is covered: flipped
    key fields in a pre-key header, which the session itself would ignore, and flipped
    ratchet keys, which make vodozemac start a new chain before it fails, included."""
    _, _, out, inbound = _pair()
    if replied:
        out.decrypt(*inbound.encrypt(b"reply"))
    kind, ct = out.encrypt(b"payload")
    assert kind is (OlmKind.NORMAL if replied else OlmKind.PREKEY)
    before = inbound.pickle(KEY)
    messages: set[str] = set()
    for i in range(len(ct)):
        flipped = ct[:i] + bytes([ct[i] ^ 0x01]) + ct[i + 1 :]
        with pytest.raises(DecryptError) as info:
            inbound.decrypt(kind, flipped)
        messages.add(str(info.value))
        assert inbound.pickle(KEY) == before
    for bad in (b"", ct[:-1], ct + b"\x00", b"\xff" * 40):
        with pytest.raises(DecryptError):
            inbound.decrypt(kind, bad)
        assert inbound.pickle(KEY) == before
    assert len(messages) == 1  # one message, whatever went wrong
    twin, plaintext = inbound.try_decrypt(kind, ct)
    assert plaintext == b"payload"
    assert inbound.pickle(KEY) == before  # try_decrypt leaves the original alone
    assert twin.pickle(KEY) != before
    assert inbound.decrypt(kind, ct) == b"payload"


def test_non_canonical_encodings_are_refused() -> None:
    """Byte changes vodozemac alone would accept (it authenticates the decoded message):
    an over-long varint, and the ignored top bit of each Curve25519 key in a pre-key header."""
    alice, bob = Account.generate(), Account.generate()
    out = alice.create_outbound(bob.identity_keys.curve25519, bob.new_one_time_key())
    _, first = out.encrypt(b"first")
    _, inbound, _ = bob.create_inbound(alice.identity_keys.curve25519, first)
    kind, prekey = out.encrypt(b"second, still pre-key")
    assert kind is OlmKind.PREKEY
    before = inbound.pickle(KEY)
    for key_end in (34, 68, 102):  # one-time, base and identity key
        flipped = prekey[:key_end] + bytes([prekey[key_end] ^ 0x80]) + prekey[key_end + 1 :]
        raw_prekey = vz.AnyOlmMessage.from_parts(0, flipped).to_pre_key()
        assert raw_prekey is not None
        assert inbound.copy()._session.session_matches(raw_prekey)  # vodozemac alone: "same"
        with pytest.raises(DecryptError):
            inbound.decrypt(kind, flipped)
        with pytest.raises(DecryptError):
            Account.generate().create_inbound(alice.identity_keys.curve25519, flipped)
    assert inbound.pickle(KEY) == before
    out.decrypt(*inbound.encrypt(b"reply"))
    kind, normal = out.encrypt(b"normal")
    at = normal.index(b"\x10", 35)  # chain index field, after the ratchet key
    overlong = normal[: at + 1] + b"\x80" + normal[at + 1 :]
    assert inbound.copy()._session.decrypt(vz.AnyOlmMessage.from_parts(1, overlong))
    with pytest.raises(DecryptError):
        inbound.decrypt(kind, overlong)
    assert inbound.decrypt(kind, normal) == b"normal"


def test_inbound_identity_must_match_the_message() -> None:
    alice, bob = Account.generate(), Account.generate()
    _, ct = alice.create_outbound(bob.identity_keys.curve25519, bob.new_one_time_key()).encrypt(
        b"x"
    )
    top_bit = bytes(31) + b"\x80"
    with pytest.raises(DecryptError):
        bob.create_inbound(
            bytes(a ^ b for a, b in zip(alice.identity_keys.curve25519, top_bit, strict=True)), ct
        )


def test_replayed_olm_message_is_refused_by_vodozemac_too() -> None:
    _, _, out, inbound = _pair()
    kind, ct = out.encrypt(b"once")
    assert inbound.decrypt(kind, ct) == b"once"
    with pytest.raises(DecryptError):
        inbound.decrypt(kind, ct)


def test_failed_inbound_creation_leaves_the_account_unchanged() -> None:
    alice, bob = Account.generate(), Account.generate()
    otk = bob.new_one_time_key()
    _, ct = alice.create_outbound(bob.identity_keys.curve25519, otk).encrypt(b"hi")
    before = bob.pickle(KEY)
    stranger = Account.generate().identity_keys.curve25519
    for their_key, message in (
        (stranger, ct),  # identity key does not match the message
        (alice.identity_keys.curve25519, ct[:-1]),
        (alice.identity_keys.curve25519, b"garbage"),
        (alice.identity_keys.curve25519[:31], ct),
    ):
        with pytest.raises(DecryptError):
            bob.create_inbound(their_key, message)
        assert bob.pickle(KEY) == before
    _, _, plaintext = bob.create_inbound(alice.identity_keys.curve25519, ct)
    assert plaintext == b"hi"


def test_non_contributory_keys_are_refused() -> None:
    alice, bob = Account.generate(), Account.generate()
    with pytest.raises(DecryptError):
        alice.create_outbound(bob.identity_keys.curve25519, bytes(32))
    with pytest.raises(DecryptError):
        alice.create_outbound(bytes(32), bob.new_one_time_key())
    with pytest.raises(DecryptError):
        alice.create_outbound(b"short", bob.new_one_time_key())


def test_copy_is_independent() -> None:
    _, _, out, inbound = _pair()
    kind, ct = out.encrypt(b"x")
    twin = inbound.copy()
    assert twin.decrypt(kind, ct) == b"x"
    assert twin.pickle(KEY) != inbound.pickle(KEY)
    assert inbound.decrypt(kind, ct) == b"x"  # the original did not move
    account = Account.generate()
    account_copy = account.copy()
    assert account_copy.identity_keys == account.identity_keys
    account_copy.new_one_time_key()
    assert account_copy.pickle(KEY) != account.pickle(KEY)


def test_pickles_restore_and_refuse_wrong_keys() -> None:
    alice, _, out, inbound = _pair()
    restored = Session.from_pickle(out.pickle(KEY), KEY)
    kind, ct = restored.encrypt(b"after restore")
    assert inbound.decrypt(kind, ct) == b"after restore"
    assert Account.from_pickle(alice.pickle(KEY), KEY).identity_keys == alice.identity_keys
    for loader, blob in (
        (Session.from_pickle, out.pickle(KEY)),
        (Account.from_pickle, alice.pickle(KEY)),
    ):
        with pytest.raises(DecryptError):
            loader(blob, OTHER_KEY)
        with pytest.raises(DecryptError):
            loader(blob[:-4], KEY)
        with pytest.raises(DecryptError):
            loader(b"\xff\xfe", KEY)
    with pytest.raises(ValueError):
        out.pickle(b"short")
    with pytest.raises(TypeError):
        alice.pickle("k" * 32)  # type: ignore[arg-type]


def test_secrets_stay_out_of_repr() -> None:
    alice, _, out, _ = _pair()
    assert "secret" in repr(alice) and "secret" in repr(out)


# --------------------------------------------------------------------------- size arithmetic


def test_message_length_formula_matches_vodozemac() -> None:
    """Pads are sized from this formula, so it must be exact, not just an upper bound."""
    alice, bob = Account.generate(), Account.generate()
    out = alice.create_outbound(bob.identity_keys.curve25519, bob.new_one_time_key())
    sizes = [0, 1, 15, 16, 17, 100, 111, 112, 127, 128, 1000, 2047, 3887, 4000, 16400]
    for index, n in enumerate(sizes):
        kind, ct = out.encrypt(bytes(n))
        assert kind is OlmKind.PREKEY
        assert len(ct) == olm_message_len(n, OlmKind.PREKEY, index)
        assert len(ct) <= olm_message_len(n, OlmKind.PREKEY)
    _, inbound, _ = bob.create_inbound(alice.identity_keys.curve25519, ct)
    for i in range(300):  # chain index crosses the one-byte varint boundary at 128
        n = sizes[i % len(sizes)]
        kind, ct = inbound.encrypt(bytes(n))
        assert kind is OlmKind.NORMAL
        assert len(ct) == olm_message_len(n, OlmKind.NORMAL, i)


@given(st.integers(min_value=olm_message_len(0, OlmKind.PREKEY), max_value=70_000))
def test_max_plaintext_is_the_largest_that_fits(budget: int) -> None:
    p = max_olm_plaintext(budget)
    assert olm_message_len(p, OlmKind.PREKEY) <= budget < olm_message_len(p + 1, OlmKind.PREKEY)


def test_max_plaintext_refuses_impossible_budgets() -> None:
    with pytest.raises(ValueError):
        max_olm_plaintext(olm_message_len(0, OlmKind.PREKEY) - 1)
    with pytest.raises(ValueError):
        olm_message_len(-1, OlmKind.NORMAL)


# --------------------------------------------------------------------------- identity keys


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_identity_keys_round_trip(ed: bytes, curve: bytes) -> None:
    keys = IdentityKeys(ed, curve)
    assert IdentityKeys.from_bytes(keys.to_bytes()) == keys
    assert keys.to_bytes()[:32] == ed


def test_identity_keys_validate() -> None:
    with pytest.raises(ValueError):
        IdentityKeys(bytes(31), bytes(32))
    with pytest.raises(TypeError):
        IdentityKeys(bytearray(32), bytes(32))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IdentityKeys.from_bytes(bytes(63))
