"""Invitations: codec and link round trips, strict parsing, and refusal of every forgery."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kith.crypto.interfaces import IdentityKeys
from kith.crypto.olm import CRYPTO
from kith.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from kith.protocol import invitation as inv
from kith.protocol import pairwise as pw
from kith.protocol import qr
from tests.unit.protocol.pairwise_support import NOW, make_inbox, rng

key32 = st.binary(min_size=32, max_size=32)
addresses = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
)
invitations = st.builds(
    inv.Invitation,
    invitation_id=st.binary(min_size=16, max_size=16),
    expires_at_ms=st.integers(0, 2**64 - 1),
    relay=addresses,
    sender_id=st.binary(min_size=16, max_size=16),
    block_size=st.integers(1024, 65536),
    identity=st.builds(IdentityKeys, key32, key32),
    one_time_key=key32,
    signature=st.binary(min_size=64, max_size=64),
)


@settings(max_examples=300)
@given(invitations)
def test_bytes_and_link_round_trip(invitation: inv.Invitation) -> None:
    raw = invitation.to_bytes()
    assert inv.Invitation.from_bytes(raw) == invitation
    uri = invitation.to_uri()
    assert uri.startswith("kith:invite/") and len(uri) <= inv.MAX_URI_LEN
    assert inv.Invitation.from_uri(uri) == invitation
    assert inv.Invitation.from_uri("  " + uri.lower() + "\n") == invitation
    assert inv.Invitation.from_uri(invitation.qr_text()) == invitation


def _signed(seed: int = 0) -> tuple[pw.PendingInvitation, inv.Invitation]:
    pending = pw.create_invitation(
        inbox=make_inbox(rng(seed)), now_ms=NOW, rng=rng(seed), crypto=CRYPTO
    )
    return pending, pending.invitation


def test_layout_is_as_documented() -> None:
    _, invitation = _signed()
    raw = invitation.to_bytes()
    relay = invitation.relay.encode()
    assert raw[0] == 1
    assert raw[1:17] == invitation.invitation_id
    assert int.from_bytes(raw[17:25], "big") == NOW + inv.DEFAULT_TTL_MS
    assert raw[25] == len(relay) and raw[26 : 26 + len(relay)] == relay
    rest = raw[26 + len(relay) :]
    assert rest[:16] == invitation.sender_id
    assert int.from_bytes(rest[16:20], "big") == 4096
    assert rest[20:84] == invitation.identity.to_bytes()
    assert rest[84:116] == invitation.one_time_key
    assert rest[116:] == invitation.signature and len(rest) == 180
    assert invitation.signing_payload() == b"kith-invitation-v1\x00" + raw[:-64]


def test_a_genuine_invitation_verifies_until_it_expires() -> None:
    _, invitation = _signed()
    invitation.verify(NOW, CRYPTO)
    invitation.verify(NOW + inv.DEFAULT_TTL_MS - 1, CRYPTO)
    with pytest.raises(inv.InvitationExpired):
        invitation.verify(NOW + inv.DEFAULT_TTL_MS, CRYPTO)


@pytest.mark.parametrize(
    "field",
    [
        "invitation_id",
        "expires_at_ms",
        "relay",
        "sender_id",
        "block_size",
        "identity_ed25519",
        "identity_curve25519",
        "one_time_key",
        "signature",
    ],
)
def test_every_forged_field_is_refused(field: str) -> None:
    """The signature covers every field: whoever swaps the one-time key, the queue, the relay
    or the expiry in transit is refused before any key is used."""
    _, invitation = _signed()
    other = pw.create_invitation(
        inbox=make_inbox(rng(9), relay="ws://127.0.0.1:6666", block_size=2048),
        now_ms=NOW + 5,
        rng=rng(9),
        crypto=CRYPTO,
    ).invitation
    if field.startswith("identity_"):
        which = field.removeprefix("identity_")
        forged = dataclasses.replace(
            invitation,
            identity=dataclasses.replace(
                invitation.identity, **{which: getattr(other.identity, which)}
            ),
        )
    elif field == "signature":
        forged = dataclasses.replace(invitation, signature=other.signature)
    else:
        forged = dataclasses.replace(invitation, **{field: getattr(other, field)})
    assert forged != invitation
    forged = inv.Invitation.from_uri(forged.to_uri())  # as an attacker would hand it over
    with pytest.raises(DecryptError):
        forged.verify(NOW, CRYPTO)
    with pytest.raises(DecryptError):
        pw.accept_invitation(
            forged, inbox=make_inbox(rng(1)), now_ms=NOW, rng=rng(1), crypto=CRYPTO
        )


def test_a_forgery_signed_by_the_attacker_names_other_keys() -> None:
    """A self-consistent invitation from an attacker verifies (it is a real invitation, to
    the attacker): only safety numbers can tell. Its keys differ from the genuine ones."""
    _, genuine = _signed(0)
    _, attacker = _signed(5)
    attacker.verify(NOW, CRYPTO)
    assert attacker.identity != genuine.identity


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x02" + bytes(300), "version"),
        (b"\x01" + bytes(24) + b"\x00", "address"),
        (b"\x01" + bytes(24) + b"\x03a b", "address"),
        (b"\x01" + bytes(24) + b"\x01x" + bytes(16) + (512).to_bytes(4, "big"), "block size"),
    ],
)
def test_malformed_bytes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(inv.InvitationError, match=reason):
        inv.Invitation.from_bytes(data)


def test_trailing_and_missing_bytes_are_refused() -> None:
    _, invitation = _signed()
    raw = invitation.to_bytes()
    with pytest.raises(inv.InvitationError, match="trailing"):
        inv.Invitation.from_bytes(raw + b"\x00")
    for cut in (1, 63, 64, 100, len(raw) - 1):
        with pytest.raises(inv.InvitationError):
            inv.Invitation.from_bytes(raw[:cut])


@pytest.mark.parametrize(
    "link",
    [
        "",
        "kith:",
        "https://example.invalid/x",
        "kith:invite/1",  # not base32
        "kith:invite/ABC=",
        "kith:invite/é",
        "kith:invite/" + "A" * 2000,
        "kith:invite/" + base64.b32encode(b"\x01\x02").decode(),
    ],
)
def test_malformed_links_are_refused(link: str) -> None:
    with pytest.raises(inv.InvitationError):
        inv.Invitation.from_uri(link)


def test_links_are_typed_errors_for_non_text() -> None:
    with pytest.raises(inv.InvitationError):
        inv.Invitation.from_uri(b"kith:invite/AA")  # type: ignore[arg-type]
    assert issubclass(inv.InvitationError, RemoteProtocolError)


def test_qr_code_is_compact_and_printable() -> None:
    _, invitation = _signed()
    text = invitation.qr_text()
    code = qr.make(text)
    assert code.mode == "alphanumeric"  # upper-case base32 keeps the code small
    assert code.version <= 15
    lines = qr.terminal_lines(text)
    width = len(lines[0])
    assert width == code.symbol_size(scale=1, border=2)[0]
    assert all(len(line) == width for line in lines)
    assert len(lines) == (width + 1) // 2
    assert set("".join(lines)) <= {" ", "\u2580", "\u2584", "\u2588"}
    # The quiet zone is light, i.e. drawn as full blocks on a dark terminal.
    assert lines[0] == "\u2588" * width


def test_invitations_are_unlinkable() -> None:
    """Two invitations from one person share no key, id or queue."""
    r = rng(3)
    a = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO).invitation
    b = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO).invitation
    assert a.identity.ed25519 != b.identity.ed25519
    assert a.identity.curve25519 != b.identity.curve25519
    assert a.one_time_key != b.one_time_key
    assert a.invitation_id != b.invitation_id and a.sender_id != b.sender_id


def test_lifetime_is_bounded() -> None:
    r = rng(4)
    with pytest.raises(LocalProtocolError):
        pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO, ttl_ms=0)
    with pytest.raises(LocalProtocolError):
        pw.create_invitation(
            inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO, ttl_ms=inv.MAX_TTL_MS + 1
        )
    short = pw.create_invitation(inbox=make_inbox(r), now_ms=NOW, rng=r, crypto=CRYPTO, ttl_ms=1000)
    assert short.invitation.expires_at_ms == NOW + 1000
